#!/usr/bin/env python3
"""Write ``requirements-serve.txt``: exact pins of everything ``pip install '.[serve,index,qdrant]'`` installs.

The serving images install from this file (reproducible builds, and hadolint's pinning rule holds), then
the project itself with ``--no-deps``. The pins are read from the environment this runs in, which must
have those extras installed (``scripts/setup.sh``): the closure of the core dependencies plus the ``serve``,
``index`` and ``qdrant`` extras (the worker's match stage: PDQ, faiss, a Qdrant client), walked through installed
package metadata, so nothing is downloaded.

    .venv/bin/python deploy/docker/lock_serve.py            # rewrite the file
    .venv/bin/python deploy/docker/lock_serve.py --check    # exit 1 when the file is stale

The tests check the file against the same closure and that it holds no torch.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
LOCK = HERE / "requirements-serve.txt"
ROOT_DIST = "dangerclip"
EXTRAS = ("serve", "index", "qdrant")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = ROOT_DIST, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """``{canonical name: installed version}`` of everything ``root[extras]`` pulls in, root excluded.

    Raises:
        metadata.PackageNotFoundError: a required package is not installed here.
    """
    seen: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    while todo:
        name, want = todo.pop()
        dist = metadata.distribution(name)
        for spec in dist.requires or []:
            req = Requirement(spec)
            active = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (want or ("",)))
            if not active:
                continue
            key = canonical(req.name)
            if key == canonical(root):  # self-reference such as dangerclip[train] from [pseudomask]
                todo.append((root, tuple(req.extras)))
                continue
            if key not in seen:
                seen[key] = metadata.version(req.name)
                todo.append((req.name, tuple(req.extras)))
            elif req.extras:
                todo.append((req.name, tuple(req.extras)))
    return dict(sorted(seen.items()))


def render(pins: dict[str, str]) -> str:
    head = [
        "# Exact pins of the serving images' dependencies: the closure of dangerclip's core dependencies",
        "# plus the [serve], [index] and [qdrant] extras. Never torch. Regenerate with:",
        "#   .venv/bin/python deploy/docker/lock_serve.py",
    ]
    return "\n".join(head + [f"{n}=={v}" for n, v in pins.items()]) + "\n"


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` from a pins file."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonical(name)] = version.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs")
    args = parser.parse_args(argv)
    text = render(closure())
    if args.check:
        if not LOCK.exists() or LOCK.read_text() != text:
            sys.stderr.write(f"{LOCK} is stale; rerun {Path(__file__).name}\n")
            return 1
        return 0
    LOCK.write_text(text)
    sys.stdout.write(f"wrote {LOCK}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
