"""A run's ``metrics.jsonl``: one JSON line per logged step (and TensorBoard scalars when asked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dangerclip.runtime.files import atomic_write_text


class MetricsLog:
    """Appends records to ``<out>/metrics.jsonl``, flushed line by line.

    Args:
        out: the run folder.
        start_step: the step a resumed run starts from; what the interrupted run logged after it is dropped,
            because it is logged again.
        tensorboard: also write TensorBoard scalars (needs the ``tensorboard`` package).
    """

    def __init__(self, out: Path, start_step: int, tensorboard: bool) -> None:
        self.path = out / "metrics.jsonl"
        if self.path.exists():
            keep = [rec for rec in read_history(self.path) if rec.get("step", 0) <= start_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep) if start_step > 0 else "")
        self.f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            prefix = rec.get("split", "train")
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, rec["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none when it does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
