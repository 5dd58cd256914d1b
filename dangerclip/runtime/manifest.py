"""Dataset manifests: the one format that ``training/`` and ``pseudomask/`` read and write.

A manifest is JSON lines (``.jsonl``) or CSV (``.csv``), one image per row:

========  ==============================================================================================
field     meaning
========  ==============================================================================================
image     image path, relative to the manifest's folder unless absolute (required)
label     ``0``/``1`` for a single category; a category name; ``negative``; or several names joined
          by ``;``. JSON may also give ``labels: {category: 0/1}``.
mask      optional pseudo-mask PNG (full resolution, non-zero = danger). JSON may give ``{category: path}``.
split     optional ``train`` / ``val`` / ``test``
id        optional stable id (default: the image path)
========  ==============================================================================================

``read_manifest`` reports every bad row with its line number before anything is trained on.
Pure Python and Pillow: no torch.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dangerclip.runtime.preprocess import IMAGE_SUFFIXES

NEGATIVE_NAMES = ("negative", "negatives", "safe", "none", "background")
SPLITS = ("train", "val", "test")


@dataclass
class ManifestRow:
    """One image of a dataset.

    Attributes:
        image: absolute image path.
        labels: ``{category: 0 or 1}`` for every category of the model.
        masks: ``{category: absolute mask path}`` for the categories that have a pseudo-mask.
        split: ``train``, ``val``, ``test`` or ``""``.
        id: a stable id.
        line: the 1-based line of the manifest the row came from (0 when built in code).
    """

    image: str
    labels: dict[str, int]
    masks: dict[str, str] = field(default_factory=dict)
    split: str = ""
    id: str = ""
    line: int = 0

    @property
    def positive(self) -> bool:
        return any(self.labels.values())

    def to_json(self, root: Path | None = None) -> dict[str, object]:
        def rel(p: str) -> str:
            if root is None:
                return p
            try:
                return str(Path(p).resolve().relative_to(root.resolve()))
            except ValueError:
                return p

        d: dict[str, object] = {"id": self.id, "image": rel(self.image), "labels": dict(self.labels)}
        if self.masks:
            d["mask"] = {c: rel(p) for c, p in self.masks.items()}
        if self.split:
            d["split"] = self.split
        return d


@dataclass
class ManifestIssue:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ManifestError(ValueError):
    """A manifest with bad rows; ``issues`` lists every one of them."""

    def __init__(self, path: str | Path, issues: Sequence[ManifestIssue]) -> None:
        self.path = str(path)
        self.issues = list(issues)
        shown = "\n".join(f"  {i}" for i in self.issues[:50])
        more = f"\n  ... and {len(self.issues) - 50} more" if len(self.issues) > 50 else ""
        super().__init__(f"{self.path}: {len(self.issues)} bad row(s):\n{shown}{more}")


def _parse_labels(raw: object, categories: Sequence[str]) -> dict[str, int]:
    cats = list(categories)
    if isinstance(raw, dict):
        unknown = [k for k in raw if k not in cats]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown}; categories are {cats}")
        out = {c: 0 for c in cats}
        for k, v in raw.items():
            if v not in (0, 1, True, False, "0", "1"):
                raise ValueError(f"label for {k!r} must be 0 or 1, got {v!r}")
            out[k] = int(v)
        return out
    if isinstance(raw, bool) or isinstance(raw, int):
        if raw not in (0, 1) or len(cats) != 1:
            raise ValueError(f"label {raw!r}: a 0/1 label needs exactly one category, have {cats}")
        return {cats[0]: int(raw)}
    if isinstance(raw, str):
        s = raw.strip()
        if s in ("0", "1") and len(cats) == 1:
            return {cats[0]: int(s)}
        if s.lower() in NEGATIVE_NAMES or s == "0":
            return {c: 0 for c in cats}
        names = [n.strip() for n in s.replace(",", ";").split(";") if n.strip()]
        if not names:
            raise ValueError("empty label")
        unknown = [n for n in names if n not in cats]
        if unknown:
            # A single-category model accepts any positive category name as "1" only if it is the category.
            raise ValueError(f"unknown label(s) {unknown}; categories are {cats} (or 'negative')")
        return {c: int(c in names) for c in cats}
    raise ValueError(f"label must be 0/1, a category name or a mapping, got {raw!r}")


def _parse_masks(raw: object, categories: Sequence[str], base: Path) -> dict[str, str]:
    if raw in (None, ""):
        return {}
    if isinstance(raw, str):
        if len(categories) != 1:
            raise ValueError("a single mask path needs a single-category model; give {category: path}")
        raw = {categories[0]: raw}
    if not isinstance(raw, dict):
        raise ValueError(f"mask must be a path or {{category: path}}, got {raw!r}")
    out = {}
    for c, p in raw.items():
        if c not in categories:
            raise ValueError(f"mask for unknown category {c!r}")
        path = Path(str(p))
        out[c] = str(path if path.is_absolute() else (base / path))
    return out


def _rows_from_file(path: Path) -> Iterable[tuple[int, dict[str, object] | None, str]]:
    """Yield ``(line, record, error)``; record is None when the line itself is unreadable."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "image" not in reader.fieldnames:
                yield 1, None, f"CSV header must name an 'image' column, got {reader.fieldnames}"
                return
            for rec in reader:
                yield reader.line_num, dict(rec), ""
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"not valid JSON: {e.msg}"
                continue
            if not isinstance(rec, dict):
                yield n, None, "each line must be a JSON object"
                continue
            yield n, rec, ""


def read_manifest(
    path: str | Path,
    categories: Sequence[str],
    *,
    check_images: bool = True,
    skip_bad: bool = False,
) -> list[ManifestRow]:
    """Read and validate a manifest.

    Args:
        path: ``.jsonl`` or ``.csv`` file.
        categories: the model's categories (its prompts), in order.
        check_images: also open each image's header (catches unreadable files, not truncated data).
        skip_bad: drop bad rows instead of raising; they are still returned in the error of a strict read.

    Raises:
        ManifestError: listing every bad row with its line number, unless ``skip_bad``.
    """
    path = Path(path)
    base = path.parent
    rows: list[ManifestRow] = []
    issues: list[ManifestIssue] = []
    for line, rec, err in _rows_from_file(path):
        if rec is None:
            issues.append(ManifestIssue(line, err))
            continue
        try:
            img = rec.get("image")
            if not img:
                raise ValueError("missing 'image'")
            ip = Path(str(img))
            ip = ip if ip.is_absolute() else base / ip
            if not ip.is_file():
                raise ValueError(f"image file not found: {ip}")
            if "labels" in rec and rec["labels"] not in (None, ""):
                raw_labels = rec["labels"]
            elif "label" in rec and rec["label"] not in (None, ""):
                raw_labels = rec["label"]
            else:
                raise ValueError("missing 'label'")
            labels = _parse_labels(raw_labels, categories)
            masks = _parse_masks(rec.get("mask"), categories, base)
            for c, mp in masks.items():
                if not Path(mp).is_file():
                    raise ValueError(f"mask file for {c!r} not found: {mp}")
            split = str(rec.get("split") or "").strip()
            if split and split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
            if check_images:
                _check_header(ip)
            rows.append(
                ManifestRow(
                    image=str(ip),
                    labels=labels,
                    masks=masks,
                    split=split,
                    id=str(rec.get("id") or img),
                    line=line,
                )
            )
        except ValueError as e:
            issues.append(ManifestIssue(line, str(e)))
    if issues and not skip_bad:
        raise ManifestError(path, issues)
    return rows


def _check_header(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"unreadable image {path}: {e}") from e


def manifest_from_folder(root: str | Path, categories: Sequence[str] | None = None) -> list[ManifestRow]:
    """Rows for the folder layout ``<root>/<category or negative>/*.jpg``.

    Args:
        root: the dataset folder.
        categories: the model's categories; default: every sub-folder that is not a negative name.
    """
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if categories is None:
        categories = [p.name for p in folders if p.name.lower() not in NEGATIVE_NAMES]
    cats = list(categories)
    rows = []
    for folder in folders:
        neg = folder.name.lower() in NEGATIVE_NAMES
        if not neg and folder.name not in cats:
            raise ValueError(f"folder {folder.name!r} is neither a category {cats} nor a negative name")
        for img in sorted(folder.rglob("*")):
            if img.suffix.lower() in IMAGE_SUFFIXES:
                labels = {c: int(not neg and c == folder.name) for c in cats}
                rows.append(ManifestRow(image=str(img), labels=labels, id=str(img.relative_to(root))))
    return rows


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> None:
    """Write rows as JSON lines, with paths relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r.to_json(path.parent)) + "\n")
    tmp.replace(path)
