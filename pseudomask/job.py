"""The pseudo-mask job: GroundingDINO boxes → SAM masks for every image of a dataset (``PseudoMaskJob``).

For each image: GroundingDINO with one caption holding every category's phrases, a box threshold,
per-category non-maximum suppression, then SAM with each box as a prompt (``multimask_output=False``) on
one image embedding, the union of the masks per category, and that mask averaged onto the DangerCLIP
patch grid. See ``pseudomask.output`` for what is written where.

The job is resumable (``pseudomask.resume``: content hashes of finished images are in the results log),
shardable without coordination (``--shard I/N`` splits by a hash of each row's id, ``pseudomask.inputs``)
and keeps nothing across images. The command line is ``pseudomask.cli``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dangerclip.modeling.device import resolve_device, torch_threads
from dangerclip.runtime.card import PreprocessConfig
from dangerclip.runtime.manifest import ManifestRow, write_manifest
from dangerclip.runtime.preprocess import ImageError, decode_image
from dangerclip.runtime.progress import progress
from pseudomask.config import DEFAULT_GRID, DEFAULT_PROMPTS, JobConfig
from pseudomask.factory import build_models
from pseudomask.geometry import Detections, masks_to_grid, select_boxes
from pseudomask.inputs import load_card, load_rows, shard_rows
from pseudomask.output import OutputDir, atomic_save_npy, atomic_save_png
from pseudomask.resume import ResumeState, params_fingerprint

log = logging.getLogger(__name__)

__all__ = ["JobConfig", "PseudoMaskJob", "Summary"]


@dataclass
class Summary:
    """Counts of one run."""

    rows: int = 0
    in_shard: int = 0
    processed: int = 0
    with_boxes: int = 0
    no_box: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_negative: int = 0
    suspects: int = 0
    interrupted: bool = False
    model_build_s: float = 0.0
    seconds: float = 0.0
    images_per_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class _Item:
    index: int
    row: ManifestRow
    sha: str
    image: Image.Image | None = None
    decode_ms: float = 0.0
    stat: tuple[int, int] | None = None
    data: bytes | None = None


class PseudoMaskJob:
    """One run over a dataset.

    Args:
        cfg: the settings.
        detector: a ``Detector``; default: GroundingDINO built from ``cfg``.
        segmenter: a ``Segmenter``; default: from ``cfg`` (SAM or boxes).
    """

    def __init__(self, cfg: JobConfig, detector: Any = None, segmenter: Any = None) -> None:
        self.cfg = cfg
        card = load_card(cfg.model) if cfg.model else None
        self.categories: list[str] = list(cfg.prompts or (card.prompts if card else DEFAULT_PROMPTS))
        self.pre = card.preprocess if card else PreprocessConfig()
        self.grid = tuple(card.grid) if card else DEFAULT_GRID
        unknown = [c for c in cfg.captions if c not in self.categories]
        if unknown:
            raise ValueError(f"--caption for unknown categories {unknown}; categories are {self.categories}")
        self.out = OutputDir(cfg.out, cfg.shard)
        self.fingerprint = params_fingerprint(cfg, self.categories, self.pre, self.grid)  # type: ignore[arg-type]
        self.resume = ResumeState(self.out, self.fingerprint, cfg.retry_failed)
        self.detector = detector
        self.segmenter = segmenter
        self.summary = Summary()

    # -- rows and models -----------------------------------------------------------------------------------

    def work_rows(self) -> list[ManifestRow]:
        """The rows of this shard, negatives removed unless ``include_negatives``."""
        rows = load_rows(self.cfg.input, self.categories, self.cfg.skip_bad_rows)
        self.summary.rows = len(rows)
        rows = shard_rows(rows, self.cfg.shard)
        self.summary.in_shard = len(rows)
        if not self.cfg.include_negatives:
            keep = [r for r in rows if r.positive]
            self.summary.skipped_negative = len(rows) - len(keep)
            rows = keep
        return rows

    def work_rows_all(self) -> list[ManifestRow]:
        """This shard's rows, negatives included (they belong in the training manifest)."""
        return shard_rows(load_rows(self.cfg.input, self.categories, self.cfg.skip_bad_rows), self.cfg.shard)

    def _ensure_models(self) -> None:
        if self.detector is not None and self.segmenter is not None:
            return
        device = resolve_device(self.cfg.device, auto_mps=True)
        t = time.perf_counter()
        det, seg = build_models(self.cfg, self.categories, device)
        self.detector = self.detector or det
        self.segmenter = self.segmenter or seg
        log.info("models ready on %s in %.1f s", device, time.perf_counter() - t)

    # -- running ---------------------------------------------------------------------------------------------

    def run(self) -> Summary:
        """Process every unfinished image of the shard, then write the training manifest and summary."""
        with torch_threads(self.cfg.threads or 0):
            self._run()
        s = self.summary
        self.write_training_manifest(self.work_rows_all())
        self.out.write_json(self.out.summary_path, asdict(s))
        log.info(
            "pseudomask: %d processed (%d with boxes, %d no box), %d failed, %d already done, %d negatives "
            "skipped, %d suspect labels; %.2f images/s",
            s.processed,
            s.with_boxes,
            s.no_box,
            s.failed,
            s.skipped_done,
            s.skipped_negative,
            s.suspects,
            s.images_per_s,
        )
        return s

    def _run(self) -> None:
        import torch

        cfg, s = self.cfg, self.summary
        rows = self.work_rows()
        done = self.resume.done_hashes()
        start = time.perf_counter()
        qa_every = max(1, len(rows) // cfg.qa_samples) if cfg.qa_samples > 0 else 0
        bar = progress(len(rows), desc="pseudomask", unit="images", enabled=cfg.progress)
        try:
            for batch in self._batches(rows, done, bar):
                if self.detector is None or self.segmenter is None:
                    t_build = time.perf_counter()
                    self._ensure_models()
                    s.model_build_s = round(time.perf_counter() - t_build, 3)
                with torch.inference_mode():
                    self._process_batch(batch, qa_every)
                bar.update(len(batch))
                bar.set_postfix(boxes=s.with_boxes, no_box=s.no_box, failed=s.failed, refresh=False)
        except KeyboardInterrupt:
            # Every finished image is already on disk and in the results log; only the batch in flight is lost.
            log.warning("interrupted; finished images are saved, re-run to continue")
            s.interrupted = True
        finally:
            bar.close()
        s.seconds = round(time.perf_counter() - start, 3)
        work_s = s.seconds - s.model_build_s  # throughput of the images, not of loading checkpoints
        s.images_per_s = round((s.processed + s.failed) / work_s, 4) if work_s > 0 else 0.0

    def _batches(self, rows: Sequence[ManifestRow], done: set[str], bar: Any) -> Iterator[list[_Item]]:
        """Read and hash images, skip finished ones, yield decoded batches of ``batch_size``."""
        batch: list[_Item] = []
        remaining = self.cfg.limit
        for idx, row in enumerate(rows):
            t = time.perf_counter()
            item = self._read(idx, row, done)
            if item is not None and remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            if item is not None:
                item = self._decode(item, t)
            if item is None:
                bar.update(1)
                continue
            done.add(item.sha)  # a duplicate later in the list shares this image's outputs
            batch.append(item)
            if len(batch) >= self.cfg.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _read(self, idx: int, row: ManifestRow, done: set[str]) -> _Item | None:
        """The row's bytes and hash, or None when it is finished (skipped) or unreadable (recorded)."""
        try:
            st = os.stat(row.image)
            stat: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
        except OSError:
            stat = None
        # Same path, size and mtime as finished work: skip without reading tens of thousands of files.
        if self.resume.finished_unread(row.image, stat, done) is not None:
            self.summary.skipped_done += 1
            return None
        try:
            data = Path(row.image).read_bytes()
        except OSError as e:
            sha = hashlib.sha256(f"unreadable:{row.image}".encode()).hexdigest()
            if sha in done:
                self.summary.skipped_done += 1
            else:
                self._record_failure(_Item(idx, row, sha), "unreadable", str(e))
            return None
        sha = hashlib.sha256(data).hexdigest()
        self.resume.remember(row.image, sha)
        if sha in done:
            self.summary.skipped_done += 1
            return None
        return _Item(idx, row, sha, stat=stat, data=data)

    def _decode(self, item: _Item, t: float) -> _Item | None:
        try:
            item.image = decode_image(item.data or b"", max_pixels=self.cfg.max_pixels)
        except ImageError as e:
            self._record_failure(item, e.reason, str(e))
            return None
        item.data = None
        item.decode_ms = (time.perf_counter() - t) * 1000
        return item

    def _record_failure(self, item: _Item, reason: str, message: str) -> None:
        log.warning("failed %s: %s (%s)", item.row.image, reason, message)
        self.summary.failed += 1
        self.summary.failures[reason] = self.summary.failures.get(reason, 0) + 1
        self.out.append_result(
            {
                **self._base_record(item),
                "status": "failed",
                "error": {"reason": reason, "message": message[:500]},
            }
        )

    def _base_record(self, item: _Item) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": item.row.id,
            "image": item.row.image,
            "sha256": item.sha,
            "labels": dict(item.row.labels),
            "params": self.fingerprint,
        }
        if item.stat is not None:
            rec["file"] = {"size": item.stat[0], "mtime_ns": item.stat[1]}
        if self.cfg.shard is not None:
            rec["shard"] = f"{self.cfg.shard[0]}/{self.cfg.shard[1]}"
        return rec

    def _process_batch(self, batch: list[_Item], qa_every: int) -> None:
        """Detect on the batch, embed the images that have boxes, segment and write each image."""
        t0 = time.perf_counter()
        try:
            raw = self.detector.detect([it.image for it in batch])
        except Exception as e:  # noqa: BLE001 - a model failure on one batch is recorded per image
            log.exception("detector failed on a batch of %d", len(batch))
            for it in batch:
                self._record_failure(it, "model_error", f"detector: {e}")
            return
        detect_ms = (time.perf_counter() - t0) * 1000 / len(batch)
        kept = [[self._select(r.get(c, Detections())) for c in self.categories] for r in raw]
        suspects = [self._suspects(it, r) for it, r in zip(batch, raw, strict=True)]
        emb_of, embed_ms = self._embed(batch, kept)
        for i, it in enumerate(batch):
            if i not in emb_of and any(len(d) for d in kept[i]):
                continue  # its embedding failed (recorded)
            t2 = time.perf_counter()
            masks = self._segment(it, kept[i], emb_of.pop(i, None))
            if masks is None:
                continue
            segment_ms = (time.perf_counter() - t2) * 1000 + embed_ms if any(len(d) for d in kept[i]) else 0.0
            timings = {"decode": round(it.decode_ms, 2), "detect": round(detect_ms, 2), "segment": round(segment_ms, 2)}
            self._write_outputs(it, kept[i], masks, suspects[i], qa_every, timings=timings, t_write=time.perf_counter())
            it.image = None  # drop pixels as soon as the image is done

    def _select(self, d: Detections) -> Detections:
        cfg = self.cfg
        return select_boxes(d, box_threshold=cfg.box_threshold, iou_threshold=cfg.nms_iou, max_boxes=cfg.max_boxes)

    def _embed(self, batch: list[_Item], kept: list[list[Detections]]) -> tuple[dict[int, Any], float]:
        """SAM's image embedding of each image with at least one box (empty images cost nothing more).

        Returns:
            ``{batch index: embedding}`` and the time per embedded image in ms. A failure is recorded for
            each image that needed an embedding, and none is returned.
        """
        need = [i for i, k in enumerate(kept) if any(len(d) for d in k)]
        t1 = time.perf_counter()
        try:
            emb = self.segmenter.embed([np.asarray(batch[i].image) for i in need]) if need else []
        except Exception as e:  # noqa: BLE001 - recorded per image; the job goes on
            log.exception("segmenter failed on a batch of %d", len(need))
            for i in need:
                self._record_failure(batch[i], "model_error", f"segmenter: {e}")
            return {}, 0.0
        return dict(zip(need, emb, strict=True)), (time.perf_counter() - t1) * 1000 / max(1, len(need))

    def _segment(self, it: _Item, dets: list[Detections], embedding: Any) -> list[np.ndarray] | None:
        """One ``[H, W]`` mask per category: the union of its boxes' masks (empty without boxes)."""
        assert it.image is not None
        w, h = it.image.size
        if embedding is None:
            return [np.zeros((h, w), bool) for _ in self.categories]
        boxes = np.concatenate([d.boxes for d in dets if len(d)]).astype(np.float32)
        groups = [k for k, d in enumerate(dets) for _ in range(len(d))]
        try:
            return self.segmenter.segment(embedding, boxes, groups, len(self.categories))
        except Exception as e:  # noqa: BLE001 - recorded per image; the job goes on
            log.exception("segmenter failed on %s", it.row.image)
            self._record_failure(it, "model_error", f"segmenter: {e}")
            return None

    def _suspects(self, it: _Item, raw: dict[str, Detections]) -> list[dict[str, Any]]:
        """Categories labelled 0 with a box above the noise threshold: likely label noise."""
        out = []
        for c in self.categories:
            if it.row.labels.get(c, 0):
                continue
            d = raw.get(c)
            if d is not None and len(d) and float(d.scores.max()) > self.cfg.noise_threshold:
                out.append({"category": c, "score": round(float(d.scores.max()), 4)})
        return out

    def _write_outputs(
        self,
        it: _Item,
        dets: list[Detections],
        masks: list[np.ndarray],
        suspects: list[dict[str, Any]],
        qa_every: int,
        *,
        timings: dict[str, float],
        t_write: float,
    ) -> None:
        assert it.image is not None
        w, h = it.image.size
        per_cat: dict[str, Any] = {}
        for c, d, m in zip(self.categories, dets, masks, strict=True):
            mp = self.out.mask_path(it.sha, c)
            atomic_save_png(mp, Image.fromarray(m.astype(np.uint8) * 255, mode="L"))
            area = int(m.sum())
            per_cat[c] = {
                "boxes": [[round(float(v), 2) for v in b] for b in d.boxes],
                "scores": [round(float(s), 4) for s in d.scores],
                "phrases": list(d.phrases),
                "mask": self.out.rel(mp),
                "area": area,
                "area_fraction": round(area / float(w * h), 6),
            }
        grid = masks_to_grid(masks, self.grid, self.pre)  # type: ignore[arg-type]
        gp = self.out.grid_path(it.sha)
        atomic_save_npy(gp, grid)
        qa = None
        if (qa_every and it.index % qa_every == 0) or suspects:
            from pseudomask.qa import overlay

            label = ",".join(c for c, v in it.row.labels.items() if v) or "negative"
            qp = self.out.qa_path(it.sha)
            atomic_save_png(qp, overlay(it.image, self.categories, masks, dets, title=f"{it.row.id} [{label}]"))
            qa = self.out.rel(qp)
        any_box = any(len(d) for d in dets)
        timings["write"] = round((time.perf_counter() - t_write) * 1000, 2)
        timings["total"] = round(sum(timings.values()), 2)
        rec = {
            **self._base_record(it),
            "status": "ok" if any_box else "no_box",
            "width": w,
            "height": h,
            "prompts": per_cat,
            "grid": self.out.rel(gp),
            "grid_shape": list(grid.shape),
            "timings_ms": timings,
        }
        if suspects:
            rec["suspect"] = suspects
            self.summary.suspects += 1
            log.warning(
                "possible label noise: %s labelled negative for %s", it.row.id, [s["category"] for s in suspects]
            )
        if qa:
            rec["qa"] = qa
        self.out.append_result(rec)
        self.summary.processed += 1
        if any_box:
            self.summary.with_boxes += 1
        else:
            self.summary.no_box += 1

    # -- the training manifest -------------------------------------------------------------------------------

    def write_training_manifest(self, rows: Sequence[ManifestRow], path: Path | None = None) -> int:
        """Write the rows with ``mask`` pointing at the pseudo-mask PNGs; returns the rows written.

        A category gets a mask only when it is labelled positive and the detector found a box: a positive
        without a box has an unknown mask (an all-zero one would teach "no weapon here"), and a negative's
        mask is all-zero by definition. Images whose latest attempt failed are left out (training cannot
        read them); everything else is kept as in the input.
        """
        results = self.out.latest_results()
        out_rows = []
        dropped = 0
        for r in rows:
            if not (r.positive or self.cfg.include_negatives):
                # Never processed: nothing to look up, and no mask to give (a negative's is all-zero).
                out_rows.append(ManifestRow(image=r.image, labels=dict(r.labels), split=r.split, id=r.id))
                continue
            sha = self.resume.sha_of(r.image)
            rec = results.get(sha) if sha else None
            if sha is None or (rec is not None and rec.get("status") == "failed"):
                dropped += 1
                continue
            masks = {}
            if rec is not None and rec.get("params") == self.fingerprint:
                for c, info in (rec.get("prompts") or {}).items():
                    if r.labels.get(c) and info.get("boxes"):
                        masks[c] = str(self.out.root / info["mask"])
            out_rows.append(ManifestRow(image=r.image, labels=dict(r.labels), masks=masks, split=r.split, id=r.id))
        target = path or self.out.manifest_path
        write_manifest(out_rows, target)
        log.info(
            "training manifest %s: %d rows (%d with masks), %d failed images left out",
            target,
            len(out_rows),
            sum(1 for r in out_rows if r.masks),
            dropped,
        )
        return len(out_rows)
