"""``JobConfig``: everything one run of the pseudo-mask job needs, one docstring per field.

``dangerclip pseudomask`` derives its options from these fields (``pseudomask.cli``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dangerclip.runtime.preprocess import DEFAULT_MAX_PIXELS

DEFAULT_PROMPTS = ["weapon"]
"""Categories when neither ``prompts`` nor a model card gives them."""
DEFAULT_GRID = (14, 14)
"""Patch grid when no model card gives one (ViT-B/16 at 224 px)."""


@dataclass
class JobConfig:
    """Everything one run of the job needs; built once from the command line."""

    input: str
    """A manifest (``.jsonl``/``.csv``, ``dangerclip.runtime.manifest``'s format) or a ``<root>/<category>/`` folder."""
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
