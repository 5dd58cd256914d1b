"""Writing a synthetic set to disk (``generate``), and redrawing a split in memory as it was written."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from dangerclip.modeling.device import map_in_processes
from dangerclip.runtime.files import write_json, write_jsonl
from training.synth.config import SynthConfig
from training.synth.scene import SynthSample, make_sample, split_of

log = logging.getLogger(__name__)


JPEG_QUALITY = 92
"""Quality of the JPEG images ``generate`` writes (tests that redraw a set encode the same way)."""


def redraw_split(cfg: SynthConfig, split: str) -> list[SynthSample]:
    """The samples of one split of the set ``cfg`` describes, drawn again in memory (as ``generate`` drew them)."""
    return [make_sample(i, cfg) for i in range(cfg.n) if split_of(i, cfg) == split]


def jpeg_bytes(img: Image.Image) -> bytes:
    """The image encoded as ``generate`` writes it (JPEG at ``JPEG_QUALITY``)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write_one(i: int, cfg: SynthConfig, out: Path) -> dict[str, Any]:
    """Draw image ``i``, write its image and masks under ``out``; return its manifest row."""
    s = make_sample(i, cfg)
    name = f"{i:06d}"
    img_rel = f"images/{name}.{cfg.image_format}"
    if cfg.image_format == "jpg":
        s.image.save(out / img_rel, quality=JPEG_QUALITY)
    else:
        s.image.save(out / img_rel, compress_level=1)
    mask_rel = {}
    for cat, m in s.masks.items():
        mask_rel[cat] = f"masks/{name}_{cat}.png"
        Image.fromarray(m).save(out / mask_rel[cat], optimize=False)
    return {
        "id": f"synth-{cfg.seed}-{name}",
        "image": img_rel,
        "labels": s.labels,
        "mask": mask_rel,
        "split": split_of(i, cfg),
        "caption": s.caption,
        "background": s.background,
        "objects": [asdict(o) for o in s.objects],
    }


def _write_range(job: tuple[int, int, SynthConfig, Path]) -> list[dict[str, Any]]:
    lo, hi, cfg, out = job
    return [_write_one(i, cfg, out) for i in range(lo, hi)]


def generate(out: str | Path, cfg: SynthConfig, workers: int = 1) -> Path:
    """Write a synthetic set to ``out`` and return its manifest path.

    Args:
        out: output folder (created; existing files of the same names are overwritten).
        cfg: the options.
        workers: processes drawing images; the set is the same for any number (image ``i`` depends only on
            ``(seed, i)``, and rows are written in index order).

    Returns:
        ``out/manifest.jsonl``.
    """
    cfg.validate()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    end = cfg.start + cfg.n
    jobs = [(lo, min(lo + 250, end), cfg, out) for lo in range(cfg.start, end, 250)]
    rows = [row for part in map_in_processes(_write_range, jobs, workers) for row in part]
    manifest = write_jsonl(out / "manifest.jsonl", rows)
    write_json(out / "synth.json", asdict(cfg), indent=2)
    n_pos = sum(any(row["labels"].values()) for row in rows)
    log.info("wrote %d images (%d with weapons) to %s in %.1f s", cfg.n, n_pos, out, time.perf_counter() - t0)
    return manifest
