"""Resume bookkeeping: which images are finished with the current settings, and each file's content hash.

Finished work is what the results log says, under a fingerprint of every setting that changes an image's
outputs; a re-run recognises it by content hash, and skips files whose path, size and mtime are those of
finished work without reading them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dangerclip.runtime.card import PreprocessConfig
from pseudomask.config import JobConfig
from pseudomask.output import OutputDir


def _file_identity(path: str | None) -> str:
    """A checkpoint's name and size (``""`` for none)."""
    if not path:
        return ""
    try:
        st = os.stat(path)
    except OSError:
        return str(path)
    # Size and name identify a checkpoint well enough; hashing gigabytes on every start does not pay.
    return f"{Path(path).name}:{st.st_size}"


def params_fingerprint(cfg: JobConfig, categories: Sequence[str], pre: PreprocessConfig, grid: tuple[int, int]) -> str:
    """Hash of everything that changes an image's outputs; finished work only counts when it matches."""
    d = {
        "categories": list(categories),
        "captions": {c: cfg.captions.get(c) or [c] for c in categories},
        "box_threshold": cfg.box_threshold,
        "text_threshold": cfg.text_threshold,
        "nms_iou": cfg.nms_iou,
        "max_boxes": cfg.max_boxes,
        "segmenter": cfg.segmenter,
        "sam": [cfg.sam_model, _file_identity(cfg.sam_checkpoint)] if cfg.segmenter == "sam" else None,
        "dino": [cfg.dino_config, _file_identity(cfg.dino_checkpoint), cfg.dino_size],
        "random_weights": cfg.random_weights,
        "preprocess": asdict(pre),
        "grid": list(grid),
    }
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class ResumeState:
    """What earlier runs into the same output folder finished, and the content hashes seen in this one.

    Args:
        out: the output folder.
        fingerprint: ``params_fingerprint`` of this run; records under another one do not count.
        retry_failed: failed images count as unfinished.
    """

    def __init__(self, out: OutputDir, fingerprint: str, retry_failed: bool) -> None:
        self.out = out
        self.fingerprint = fingerprint
        self.retry_failed = retry_failed
        self._sha: dict[str, str] = {}
        self._loaded = False
        # image path → (size, mtime_ns, sha256) of finished work: a re-run skips unchanged files unread.
        self._known: dict[str, tuple[Any, Any, str]] = {}

    def done_hashes(self) -> set[str]:
        """Content hashes finished with the current settings (failed ones too, unless ``retry_failed``)."""
        done = set()
        self._loaded = True
        self._known.clear()
        for sha, rec in self.out.latest_results().items():
            if rec.get("params") != self.fingerprint:
                continue
            f = rec.get("file")
            if isinstance(f, dict) and "image" in rec:
                self._known[rec["image"]] = (f.get("size"), f.get("mtime_ns"), sha)
            if rec.get("status") == "failed" and (
                self.retry_failed or (rec.get("error") or {}).get("reason") == "model_error"
            ):
                # Model errors (out of memory, a bad device) are not the image's fault: always retried.
                continue
            done.add(sha)
        return done

    def finished_unread(self, path: str, stat: tuple[int, int] | None, done: set[str]) -> str | None:
        """The hash of finished work at ``path`` when the file's size and mtime are unchanged, else None."""
        known = self._known.get(path)
        if stat is None or known is None or known[:2] != stat or known[2] not in done:
            return None
        self._sha[path] = known[2]
        return known[2]

    def remember(self, path: str, sha: str) -> None:
        """The content hash of a file read in this run."""
        self._sha[path] = sha

    def sha_of(self, path: str) -> str | None:
        """A file's content hash: seen in this run, known for an unchanged file, or read now (None: unreadable)."""
        if not self._loaded:
            self.done_hashes()
        if path in self._sha:
            return self._sha[path]
        known = self._known.get(path)
        if known is not None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            if known[:2] == (st.st_size, st.st_mtime_ns):
                return known[2]
        try:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return None
