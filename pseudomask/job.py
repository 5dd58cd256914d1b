"""``dangerclip pseudomask``: GroundingDINO boxes → SAM masks for every image of a dataset.

For each image: GroundingDINO with one caption holding every category's phrases, a box threshold,
per-category non-maximum suppression, then SAM with each box as a prompt (``multimask_output=False``) on
one image embedding, the union of the masks per category, and that mask averaged onto the DangerCLIP
patch grid. See ``pseudomask.output`` for what is written where.

The job is resumable (content hashes of finished images are in the results log), shardable without
coordination (``--shard I/N`` splits by a hash of each row's id) and keeps nothing across images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dangerclip.card import CARD_KEY, ModelCard, PreprocessConfig
from dangerclip.manifest import ManifestRow, manifest_from_folder, read_manifest, write_manifest
from dangerclip.preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_image
from pseudomask.geometry import Detections, masks_to_grid, select_boxes
from pseudomask.output import OutputDir
from training.commandline import exits_2_on_bad_input
from training.runtime import resolve_device

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = ["weapon"]
DEFAULT_GRID = (14, 14)


@dataclass
class JobConfig:
    """Everything one run of the job needs; built once from the command line."""

    input: str
    """A manifest (``.jsonl``/``.csv``, the ``dangerclip.manifest`` format) or a ``<root>/<category>/`` folder."""
    out: str
    """Output folder (created); re-running into the same folder resumes."""
    prompts: list[str] | None = None
    """Categories, one mask each; default: the model card's prompts, else ``["weapon"]``."""
    captions: dict[str, list[str]] = field(default_factory=dict)
    """Detector phrases per category (default: the category name itself)."""
    model: str | None = None
    """A DangerCLIP ONNX file, safetensors checkpoint or card JSON: gives prompts, preprocessing and grid."""
    box_threshold: float = 0.35
    """Keep boxes whose category score is above this (autodistill's GroundedSAM default)."""
    text_threshold: float = 0.25
    """Caption tokens above this form a box's phrase."""
    nms_iou: float = 0.5
    """Per-category non-maximum suppression IoU threshold."""
    max_boxes: int = 50
    """At most this many boxes per category and image (by score), so degenerate detections stay bounded."""
    include_negatives: bool = False
    """Also run images labelled negative, to find label noise (a confident box on a negative)."""
    noise_threshold: float = 0.5
    """A box on a negative-labelled category scoring above this marks the image as suspect."""
    segmenter: str = "sam"
    """``sam`` (the GroundedSAM recipe) or ``box`` (each box is its mask; no SAM weights)."""
    sam_model: str = "vit_h"
    """SAM config: ``vit_h``, ``vit_l``, ``vit_b`` or ``tiny`` (tests)."""
    sam_checkpoint: str | None = None
    """Local SAM ``.pth``."""
    dino_config: str = "swint-ogc"
    """GroundingDINO config name (``swint-ogc``, ``swinb``, ``tiny``) or ``.py`` path."""
    dino_checkpoint: str | None = None
    """Local GroundingDINO ``.pth``."""
    bert_dir: str | None = None
    """Folder with bert-base-uncased's ``vocab.txt`` (and optionally ``config.json`` and weights)."""
    random_weights: bool = False
    """Build both models untrained; for tests and benchmarks, never for real masks."""
    dino_size: int = 800
    """Shortest image side fed to GroundingDINO."""
    batch_size: int = 1
    """Images per model call (GroundingDINO and SAM's image encoder)."""
    box_chunk: int = 16
    """Boxes decoded per SAM mask-decoder call."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; unavailable devices fall back to CPU."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    shard: tuple[int, int] | None = None
    """``(index, count)``: process only the rows whose id hashes to ``index`` modulo ``count``."""
    qa_samples: int = 0
    """Write this many QA overlays, spread evenly over the work (suspects always get one)."""
    retry_failed: bool = False
    """Re-run images whose previous attempt failed (otherwise a re-run skips them too)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images above this many pixels are recorded as failed, not decoded."""
    limit: int | None = None
    """Process at most this many images (after skipping finished ones)."""
    progress: bool = True
    """Show a progress bar on stderr."""
    skip_bad_rows: bool = False
    """Drop manifest rows that fail validation (missing image file, bad label) instead of refusing to start."""


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


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based index, as Kubernetes' ``JOB_COMPLETION_INDEX``) → ``(I, N)``."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard must be I/N with integers, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n


def shard_of(row_id: str, n: int) -> int:
    """The shard a row belongs to: stable across machines, runs and manifest order."""
    return int.from_bytes(hashlib.sha1(row_id.encode("utf-8")).digest()[:8], "big") % n


def load_card(path: str | Path) -> ModelCard:
    """The model card of a DangerCLIP ONNX file, safetensors checkpoint or card JSON."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".json":
        d = json.loads(p.read_text(encoding="utf-8"))
        return ModelCard.from_dict(d.get("card", d) if isinstance(d, dict) else d)
    if suffix == ".onnx":
        import onnx

        m = onnx.load(str(p), load_external_data=False)
        meta = {kv.key: kv.value for kv in m.metadata_props}
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), "np") as f:
            meta = f.metadata() or {}
    else:
        raise ValueError(f"{p}: expected a .onnx, .safetensors or card .json file")
    if CARD_KEY not in meta:
        raise ValueError(f"{p} has no DangerCLIP model card (metadata key {CARD_KEY!r})")
    return ModelCard.from_json(meta[CARD_KEY])


def load_rows(input_path: str | Path, categories: Sequence[str], skip_bad: bool = False) -> list[ManifestRow]:
    """Rows of a manifest file or a ``<root>/<category or negative>/`` folder.

    Rows whose image exists but does not decode are kept (``check_images=False``): the job records them
    as failed with a reason. Rows that are wrong in themselves (missing file, unknown label) fail the whole
    read with every line listed, unless ``skip_bad``.
    """
    p = Path(input_path)
    if p.is_dir():
        return manifest_from_folder(p, list(categories))
    if not p.is_file():
        raise FileNotFoundError(f"input not found: {p} (expected a manifest file or an image folder)")
    if skip_bad:
        from dangerclip.manifest import ManifestError

        try:
            return read_manifest(p, list(categories), check_images=False)
        except ManifestError as e:
            log.warning("%d bad manifest row(s) skipped, e.g. %s", len(e.issues), e.issues[0])
            return read_manifest(p, list(categories), check_images=False, skip_bad=True)
    return read_manifest(p, list(categories), check_images=False)


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


def build_models(cfg: JobConfig, categories: Sequence[str], device: str) -> tuple[Any, Any]:
    """The detector and segmenter the config names."""
    from pseudomask.models import (
        GroundingDinoDetector,
        SamSegmenter,
        build_grounding_dino,
        build_sam,
        resolve_text_encoder,
    )
    from pseudomask.segmenters import BoxSegmenter

    text = resolve_text_encoder(cfg.bert_dir)
    dino = build_grounding_dino(
        cfg.dino_config, cfg.dino_checkpoint, text_encoder=text, random_weights=cfg.random_weights, device=device
    )
    captions = {c: cfg.captions.get(c) or [c] for c in categories}
    detector = GroundingDinoDetector(
        dino,
        captions,
        text_threshold=cfg.text_threshold,
        candidate_threshold=min(cfg.box_threshold, cfg.noise_threshold),
        image_size=cfg.dino_size,
    )
    if cfg.segmenter == "box":
        return detector, BoxSegmenter()
    if cfg.segmenter != "sam":
        raise ValueError(f"unknown segmenter {cfg.segmenter!r}; expected 'sam' or 'box'")
    sam = build_sam(cfg.sam_model, cfg.sam_checkpoint, random_weights=cfg.random_weights, device=device)
    return detector, SamSegmenter(sam, box_chunk=cfg.box_chunk)


def _file_identity(path: str | None) -> str:
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


# ----------------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    index: int
    row: ManifestRow
    sha: str
    image: Image.Image | None = None
    decode_ms: float = 0.0
    stat: tuple[int, int] | None = None


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
        self.detector = detector
        self.segmenter = segmenter
        self.summary = Summary()
        self._sha_cache: dict[str, str] = {}
        # image path → (size, mtime_ns, sha256) of finished work: a re-run skips unchanged files unread.
        self._known: dict[str, tuple[Any, Any, str]] = {}

    # -- setup ---------------------------------------------------------------------------------------------

    def _ensure_models(self) -> None:
        if self.detector is not None and self.segmenter is not None:
            return
        import torch

        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        device = resolve_device(self.cfg.device, auto_mps=True)
        t = time.perf_counter()
        det, seg = build_models(self.cfg, self.categories, device)
        self.detector = self.detector or det
        self.segmenter = self.segmenter or seg
        log.info("models ready on %s in %.1f s", device, time.perf_counter() - t)

    def work_rows(self) -> list[ManifestRow]:
        """The rows of this shard, negatives removed unless ``include_negatives``."""
        rows = load_rows(self.cfg.input, self.categories, self.cfg.skip_bad_rows)
        self.summary.rows = len(rows)
        if self.cfg.shard is not None:
            i, n = self.cfg.shard
            rows = [r for r in rows if shard_of(r.id, n) == i]
        self.summary.in_shard = len(rows)
        if not self.cfg.include_negatives:
            keep = [r for r in rows if r.positive]
            self.summary.skipped_negative = len(rows) - len(keep)
            rows = keep
        return rows

    def done_hashes(self) -> set[str]:
        """Content hashes finished with the current settings (failed ones too, unless ``retry_failed``)."""
        done = set()
        self._known.clear()
        for sha, rec in self.out.latest_results().items():
            if rec.get("params") != self.fingerprint:
                continue
            f = rec.get("file")
            if isinstance(f, dict) and "image" in rec:
                self._known[rec["image"]] = (f.get("size"), f.get("mtime_ns"), sha)
            if rec.get("status") == "failed" and (
                self.cfg.retry_failed or (rec.get("error") or {}).get("reason") == "model_error"
            ):
                # Model errors (out of memory, a bad device) are not the image's fault: always retried.
                continue
            done.add(sha)
        return done

    # -- running ---------------------------------------------------------------------------------------------

    def run(self) -> Summary:
        """Process every unfinished image of the shard, then write the training manifest and summary."""
        import torch

        cfg = self.cfg
        rows = self.work_rows()
        done = self.done_hashes()
        start = time.perf_counter()
        qa_every = max(1, len(rows) // cfg.qa_samples) if cfg.qa_samples > 0 else 0
        bar = _progress(len(rows), cfg.progress)
        models_ready = False
        try:
            for batch in self._batches(rows, done, bar):
                if not models_ready:
                    t_build = time.perf_counter()
                    self._ensure_models()
                    self.summary.model_build_s = round(time.perf_counter() - t_build, 3)
                    models_ready = True
                with torch.inference_mode():
                    self._process_batch(batch, qa_every)
                bar.update(len(batch))
                bar.set_postfix(
                    boxes=self.summary.with_boxes, no_box=self.summary.no_box, failed=self.summary.failed, refresh=False
                )
        except KeyboardInterrupt:
            # Every finished image is already on disk and in the results log; only the batch in flight is lost.
            log.warning("interrupted; finished images are saved, re-run to continue")
            self.summary.interrupted = True
        finally:
            bar.close()
        s = self.summary
        s.seconds = round(time.perf_counter() - start, 3)
        n = s.processed + s.failed
        work_s = s.seconds - s.model_build_s  # throughput of the images, not of loading checkpoints
        s.images_per_s = round(n / work_s, 4) if work_s > 0 else 0.0
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

    def work_rows_all(self) -> list[ManifestRow]:
        """This shard's rows, negatives included (they belong in the training manifest)."""
        rows = load_rows(self.cfg.input, self.categories, self.cfg.skip_bad_rows)
        if self.cfg.shard is not None:
            i, n = self.cfg.shard
            rows = [r for r in rows if shard_of(r.id, n) == i]
        return rows

    def _batches(self, rows: Sequence[ManifestRow], done: set[str], bar: Any) -> Iterator[list[_Item]]:
        """Read and hash images, skip finished ones, yield decoded batches of ``batch_size``."""
        batch: list[_Item] = []
        remaining = self.cfg.limit
        for idx, row in enumerate(rows):
            t = time.perf_counter()
            try:
                st = os.stat(row.image)
                stat: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
            except OSError:
                stat = None
            known = self._known.get(row.image)
            if stat is not None and known is not None and known[:2] == stat and known[2] in done:
                # Same path, size and mtime as finished work: skip without reading tens of thousands of files.
                self._sha_cache[row.image] = known[2]
                self.summary.skipped_done += 1
                bar.update(1)
                continue
            try:
                data = Path(row.image).read_bytes()
            except OSError as e:
                sha = hashlib.sha256(f"unreadable:{row.image}".encode()).hexdigest()
                if sha in done:
                    self.summary.skipped_done += 1
                    bar.update(1)
                    continue
                self._record_failure(_Item(idx, row, sha), "unreadable", str(e))
                bar.update(1)
                continue
            sha = hashlib.sha256(data).hexdigest()
            self._sha_cache[row.image] = sha
            if sha in done:
                self.summary.skipped_done += 1
                bar.update(1)
                continue
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            item = _Item(idx, row, sha, stat=stat)
            try:
                item.image = decode_image(data, max_pixels=self.cfg.max_pixels)
            except ImageError as e:
                self._record_failure(item, e.reason, str(e))
                bar.update(1)
                continue
            item.decode_ms = (time.perf_counter() - t) * 1000
            done.add(sha)  # a duplicate later in the list shares this image's outputs
            batch.append(item)
            if len(batch) >= self.cfg.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

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
        cfg = self.cfg
        images = [it.image for it in batch]
        t0 = time.perf_counter()
        try:
            raw = self.detector.detect(images)
        except Exception as e:  # noqa: BLE001 - a model failure on one batch is recorded per image
            log.exception("detector failed on a batch of %d", len(batch))
            for it in batch:
                self._record_failure(it, "model_error", f"detector: {e}")
            return
        detect_ms = (time.perf_counter() - t0) * 1000 / len(batch)

        kept: list[list[Detections]] = []
        for r in raw:
            kept.append(
                [
                    select_boxes(
                        r.get(c, Detections()),
                        box_threshold=cfg.box_threshold,
                        iou_threshold=cfg.nms_iou,
                        max_boxes=cfg.max_boxes,
                    )
                    for c in self.categories
                ]
            )
        suspects = [self._suspects(it, r) for it, r in zip(batch, raw, strict=True)]

        # SAM's image encoder only runs for images with at least one box: empty images cost nothing more.
        need = [i for i, k in enumerate(kept) if any(len(d) for d in k)]
        failed: set[int] = set()
        t1 = time.perf_counter()
        try:
            emb = self.segmenter.embed([np.asarray(images[i]) for i in need]) if need else []
        except Exception as e:  # noqa: BLE001 - recorded per image; the job goes on
            log.exception("segmenter failed on a batch of %d", len(need))
            for i in need:
                self._record_failure(batch[i], "model_error", f"segmenter: {e}")
            failed.update(need)
            need, emb = [], []
        embed_ms = (time.perf_counter() - t1) * 1000 / max(1, len(need))
        emb_of = dict(zip(need, emb, strict=True))

        for i, it in enumerate(batch):
            if i in failed:
                continue
            assert it.image is not None
            w, h = it.image.size
            dets = kept[i]
            t2 = time.perf_counter()
            if i in emb_of:
                boxes = np.concatenate([d.boxes for d in dets if len(d)]).astype(np.float32)
                groups = [k for k, d in enumerate(dets) for _ in range(len(d))]
                try:
                    masks = self.segmenter.segment(emb_of.pop(i), boxes, groups, len(self.categories))
                except Exception as e:  # noqa: BLE001 - recorded per image; the job goes on
                    log.exception("segmenter failed on %s", it.row.image)
                    self._record_failure(it, "model_error", f"segmenter: {e}")
                    continue
                segment_ms = (time.perf_counter() - t2) * 1000 + embed_ms
            else:
                masks = [np.zeros((h, w), bool) for _ in self.categories]
                segment_ms = 0.0
            t3 = time.perf_counter()
            self._write_outputs(
                it,
                dets,
                masks,
                suspects[i],
                qa_every,
                timings={
                    "decode": round(it.decode_ms, 2),
                    "detect": round(detect_ms, 2),
                    "segment": round(segment_ms, 2),
                },
                t_write=t3,
            )
            it.image = None  # drop pixels as soon as the image is done

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
        from pseudomask.output import atomic_save_npy, atomic_save_png

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
            from pseudomask.output import atomic_save_png as save
            from pseudomask.qa import overlay

            label = ",".join(c for c, v in it.row.labels.items() if v) or "negative"
            qp = self.out.qa_path(it.sha)
            save(qp, overlay(it.image, self.categories, masks, dets, title=f"{it.row.id} [{label}]"))
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
        if not self._known:
            self.done_hashes()  # fills the path → (size, mtime, sha) map, so --collect need not re-hash
        out_rows = []
        dropped = 0
        for r in rows:
            if not (r.positive or self.cfg.include_negatives):
                # Never processed: nothing to look up, and no mask to give (a negative's is all-zero).
                out_rows.append(ManifestRow(image=r.image, labels=dict(r.labels), split=r.split, id=r.id))
                continue
            sha = self._sha_cache.get(r.image) or self._known_sha(r.image) or _sha_of(r.image)
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

    def _known_sha(self, path: str) -> str | None:
        """The content hash of finished work for an unchanged file (same size and mtime), else None."""
        known = self._known.get(path)
        if known is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return known[2] if known[:2] == (st.st_size, st.st_mtime_ns) else None


def _sha_of(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class _LogProgress:
    """Progress for logs (Kubernetes pods, no TTY): a line with images/s and ETA every ``period_s``."""

    def __init__(self, total: int, period_s: float = 60.0) -> None:
        self.total, self.n, self.period = total, 0, period_s
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.period:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            log.info("pseudomask: %d/%d images, %.2f images/s, ETA %.0f s", self.n, self.total, rate, eta)

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _LogProgress(total)
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr, desc="pseudomask")


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _caption_arg(text: str) -> tuple[str, list[str]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--caption must be CATEGORY=PHRASE[;PHRASE...], got {text!r}")
    cat, phrases = text.split("=", 1)
    return cat.strip(), [p.strip() for p in phrases.split(";") if p.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dangerclip pseudomask``."""
    d = JobConfig(input="", out="")
    a = parser.add_argument
    a("input", help="manifest (.jsonl/.csv) or image folder <root>/<category|negative>/")
    a("--out", required=True, help="output folder; re-running into it resumes")
    a("--prompts", nargs="+", help="categories (default: the model card's, else 'weapon')")
    a(
        "--caption",
        action="append",
        type=_caption_arg,
        default=[],
        metavar="CAT=PHRASE[;PHRASE]",
        help="what the detector looks for per category (default: the category name); repeatable",
    )
    a("--model", help="DangerCLIP .onnx / .safetensors / card .json: prompts, preprocessing and patch grid")
    a("--box-threshold", type=float, default=d.box_threshold, help="keep boxes scoring above this (default 0.35)")
    a("--text-threshold", type=float, default=d.text_threshold, help="phrase tokens above this (default 0.25)")
    a("--nms-iou", type=float, default=d.nms_iou, help="per-category NMS IoU (default 0.5)")
    a("--max-boxes", type=int, default=d.max_boxes, help="per category and image")
    a("--include-negatives", action="store_true", help="also run negatives to find label noise")
    a(
        "--noise-threshold",
        type=float,
        default=d.noise_threshold,
        help="box score on a negative that marks it as suspect",
    )
    a("--segmenter", choices=["sam", "box"], default=d.segmenter, help="sam, or box: each box is its mask")
    a("--sam-model", default=d.sam_model, help="vit_h, vit_l, vit_b or tiny")
    a("--sam-checkpoint", help="local SAM .pth")
    a("--dino-config", default=d.dino_config, help="swint-ogc, swinb, tiny or a config .py path")
    a("--dino-checkpoint", help="local GroundingDINO .pth")
    a("--bert-dir", help="folder with bert-base-uncased vocab.txt (+ optional config.json)")
    a("--random-weights", action="store_true", help="untrained models: tests and benchmarks only")
    a("--dino-size", type=int, default=d.dino_size, help="GroundingDINO shortest side (default 800)")
    a("--batch-size", type=int, default=d.batch_size, help="images per model call (default 1)")
    a("--box-chunk", type=int, default=d.box_chunk, help="boxes per SAM decoder call (default 16)")
    a("--device", default=d.device, help="auto, cpu, cuda, cuda:N, mps (unavailable: cpu)")
    a("--threads", type=int, help="torch CPU threads")
    a("--shard", type=parse_shard, help="I/N: this process does shard I (0-based) of N")
    a("--qa-samples", type=int, default=0, help="write this many QA overlays under OUT/qa/")
    a("--retry-failed", action="store_true", help="re-run images that failed before")
    a("--max-pixels", type=int, default=d.max_pixels, help="larger images are recorded as failed")
    a("--limit", type=int, help="process at most this many images")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--skip-bad-rows", action="store_true", help="drop invalid manifest rows instead of refusing to start")
    a(
        "--collect",
        action="store_true",
        help="load no model: write OUT/manifest.jsonl for the whole input from every shard's results",
    )


def config_from_args(args: argparse.Namespace) -> JobConfig:
    captions: dict[str, list[str]] = {}
    for cat, phrases in args.caption:
        captions.setdefault(cat, []).extend(phrases)
    return JobConfig(
        input=args.input,
        out=args.out,
        prompts=args.prompts,
        captions=captions,
        model=args.model,
        box_threshold=args.box_threshold,
        text_threshold=args.text_threshold,
        nms_iou=args.nms_iou,
        max_boxes=args.max_boxes,
        include_negatives=args.include_negatives,
        noise_threshold=args.noise_threshold,
        segmenter=args.segmenter,
        sam_model=args.sam_model,
        sam_checkpoint=args.sam_checkpoint,
        dino_config=args.dino_config,
        dino_checkpoint=args.dino_checkpoint,
        bert_dir=args.bert_dir,
        random_weights=args.random_weights,
        dino_size=args.dino_size,
        batch_size=max(1, args.batch_size),
        box_chunk=args.box_chunk,
        device=args.device,
        threads=args.threads,
        shard=None if args.collect else args.shard,
        qa_samples=args.qa_samples,
        retry_failed=args.retry_failed,
        max_pixels=args.max_pixels,
        limit=args.limit,
        progress=not args.no_progress and sys.stderr.isatty(),
        skip_bad_rows=args.skip_bad_rows,
    )


def check_weights(cfg: JobConfig) -> None:
    """Fail before touching the dataset when a weight or tokenizer file is missing.

    Raises:
        WeightsError: naming the missing file and the flag that gives it.
    """
    from pseudomask.models import WeightsError, resolve_text_encoder

    if cfg.random_weights:
        return
    need = [("GroundingDINO", "--dino-checkpoint", cfg.dino_checkpoint)]
    if cfg.segmenter == "sam":
        need.append((f"SAM {cfg.sam_model}", "--sam-checkpoint", cfg.sam_checkpoint))
    for name, flag, p in need:
        if not p:
            raise WeightsError(f"{name} checkpoint not given: pass {flag} PATH (or --random-weights for a test run)")
        if not Path(p).is_file():
            raise WeightsError(f"{name} checkpoint not found: {p} ({flag})")
    resolve_text_encoder(cfg.bert_dir)


@exits_2_on_bad_input("pseudomask")
def run(args: argparse.Namespace) -> int:
    """Entry point of ``dangerclip pseudomask``; prints the summary as JSON on stdout.

    A missing weight file (``WeightsError``) or bad input is one line on stderr and exit code 2.
    """
    cfg = config_from_args(args)
    job = PseudoMaskJob(cfg)
    if args.collect:
        n = job.write_training_manifest(load_rows(cfg.input, job.categories, cfg.skip_bad_rows))
        print(json.dumps({"manifest": str(job.out.manifest_path), "rows": n}))
        return 0
    check_weights(cfg)
    summary = job.run()
    print(json.dumps(asdict(summary), sort_keys=True))
    return 130 if summary.interrupted else 0
