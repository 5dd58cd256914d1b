"""Hash banks in the exchange form Hasher-Matcher-Actioner and ThreatExchange use for PDQ: one hash a line.

Read: ``hash`` or ``hash,id`` or ``hash,id,label`` (comma- or tab-separated), 64 hex digits per hash; blank lines,
``#`` comments and a header line (``hash,...``) are skipped. Lines without an id get ``<bank name>:<line>``.
Written: CSV with the header ``hash,id,label,quality``, which reads back the same.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable
from pathlib import Path

from dangerclip.runtime.files import atomic_write_text
from dangerclip.runtime.index.pdq import from_hex, to_hex
from dangerclip.runtime.index.store import Entry


def read_bank(path: str | Path, label: str | None = None) -> list[Entry]:
    """The entries of a bank file.

    Raises:
        ValueError: a line whose hash is not 64 hex digits (the message names the line).
    """
    path = Path(path)
    out = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in (line.split("\t") if "\t" in line else line.split(","))]
        if n == 1 and cells[0].lower() in ("hash", "pdq", "signal", "signal_value"):
            continue
        try:
            h = to_hex(from_hex(cells[0]))
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        rid = cells[1] if len(cells) > 1 and cells[1] else f"{path.stem}:{n}"
        lab = cells[2] if len(cells) > 2 and cells[2] else label
        quality = int(cells[3]) if len(cells) > 3 and cells[3].isdigit() else 100
        out.append(Entry(id=rid, label=lab, pdq=h, quality=quality, source=str(path), added_at=time.time()))
    return out


def write_bank(path: str | Path, entries: Iterable[Entry]) -> int:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["hash", "id", "label", "quality"])
    n = 0
    for e in entries:
        w.writerow([e.pdq, e.id, e.label or "", e.quality])
        n += 1
    atomic_write_text(path, buf.getvalue())
    return n
