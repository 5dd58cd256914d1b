"""Image–caption data for pre-training: synthetic captions, their hard negatives and word tags, tokenised.

Either read from a synthetic manifest (``load_caption_data``) or drawn straight into memory in several
processes (``synthetic_caption_data``), which is how the demo backbone's 100 000 images were made.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dangerclip.modeling.device import map_in_processes
from training.synth import DISTRACTOR_KINDS, WEAPON_KINDS, caption_for


@dataclass
class CaptionData:
    """Images and tokenised captions held in memory.

    Attributes:
        images: ``[N, S, S, 3]`` uint8.
        tokens: ``[N, L]`` int64 caption tokens.
        hard_tokens: ``[N, L]`` int64 hard-negative caption tokens (one noun swapped).
        tags: ``[N, V]`` float 0/1: which of ``TAG_WORDS`` the caption names (with hypernyms).
        captions: the caption strings.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    hard_tokens: torch.Tensor
    captions: list[str]
    tags: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


TAG_WORDS: tuple[str, ...] = (*WEAPON_KINDS, *DISTRACTOR_KINDS, "weapon")
"""Words of the word-grounding term: every object noun of the captions, plus the hypernym ``weapon``."""

HYPERNYMS: dict[str, str] = {k: "weapon" for k in WEAPON_KINDS}
"""Noun → broader word, as a tagger's word hierarchy gives it (a pistol is a weapon)."""


def caption_tags(objects: Sequence[Mapping[str, Any]]) -> list[float]:
    """0/1 per ``TAG_WORDS`` entry: the nouns of an image's caption and their hypernyms."""
    words = {str(o["kind"]) for o in objects if int(o.get("visible", 1)) > 0}
    words |= {HYPERNYMS[w] for w in words if w in HYPERNYMS}
    return [float(w in words) for w in TAG_WORDS]


def hard_negative_caption(objects: Sequence[Mapping[str, Any]], background: str, rng: random.Random) -> str:
    """The caption with one object's noun swapped across the weapon / distractor vocabularies."""
    visible = [o for o in objects if int(o.get("visible", 1)) > 0]
    if not visible:
        return caption_for([], background)
    j = rng.randrange(len(visible))
    pairs = []
    for i, o in enumerate(visible):
        kind = str(o["kind"])
        if i == j:
            pool = DISTRACTOR_KINDS if kind in WEAPON_KINDS else tuple(WEAPON_KINDS)
            kind = pool[rng.randrange(len(pool))]
        pairs.append((str(o["colour"]), kind))
    return caption_for(pairs, background)


def read_caption_rows(manifest: Path, splits: Sequence[str] | None) -> list[dict[str, Any]]:
    rows = []
    with open(manifest, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "caption" not in row:
                raise ValueError(f"{manifest}:{n}: no 'caption'; pre-training needs a synthetic manifest")
            if splits is None or row.get("split", "train") in splits:
                rows.append(row)
    return rows


def load_caption_data(
    manifest: str | Path,
    *,
    image_size: int = 224,
    splits: Sequence[str] | None = None,
    context_length: int = 77,
    seed: int = 0,
    limit: int | None = None,
) -> CaptionData:
    """Read a synthetic manifest's images and captions into memory.

    Args:
        manifest: ``manifest.jsonl`` written by ``training.synth``.
        image_size: images are resized (bicubic) to this square size if they differ.
        splits: keep only these splits (default: all rows).
        context_length: tokenizer context.
        seed: for the choice of hard-negative captions.
        limit: keep at most this many rows.
    """
    manifest = Path(manifest)
    rows = read_caption_rows(manifest, splits)[:limit]
    if not rows:
        raise ValueError(f"{manifest}: no rows to pre-train on (splits={splits})")
    rng = random.Random(seed)
    imgs = np.empty((len(rows), image_size, image_size, 3), np.uint8)
    caps, hards, tags = [], [], []
    for i, row in enumerate(rows):
        with Image.open(manifest.parent / row["image"]) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
            imgs[i] = np.asarray(im)
        caps.append(str(row["caption"]))
        hards.append(hard_negative_caption(row.get("objects", []), str(row.get("background", "plain")), rng))
        tags.append(caption_tags(row.get("objects", [])))
    return _caption_data(imgs, caps, hards, tags, context_length)


def _caption_data(
    imgs: np.ndarray, caps: list[str], hards: list[str], tags: list[list[float]], context_length: int
) -> CaptionData:
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(context_length=context_length)
    tokens, hard_tokens = tok(caps), tok(hards)
    # Cut the common padding (see ``encode_text``); a caption longer than the context is a hard error.
    eot = tok.eot_token_id
    if not bool((tokens == eot).any(1).all() and (hard_tokens == eot).any(1).all()):
        raise ValueError(f"a caption does not fit the text context of {context_length} tokens")
    n = int(max((tokens != 0).sum(1).max(), (hard_tokens != 0).sum(1).max()))
    return CaptionData(
        torch.from_numpy(imgs),
        tokens[:, :n].contiguous(),
        hard_tokens[:, :n].contiguous(),
        caps,
        torch.tensor(tags, dtype=torch.float32),
    )


_STREAM_CHUNK = 1000
"""Images per work unit of ``synthetic_caption_data`` (also the unit its hard-negative seeds are drawn in)."""


def _caption_chunk(
    job: tuple[int, int, int, int, tuple[str, ...], float],
) -> tuple[np.ndarray, list[str], list[str], list[list[float]]]:
    seed, lo, hi, size, categories, grayscale = job
    from training.synth import SynthConfig, make_sample

    cfg = SynthConfig(n=hi, seed=seed, size=size, categories=list(categories))
    rng = random.Random(seed * 1_000_003 + lo)
    # Its own stream, so that the colour images and hard negatives are the same whatever the grey share.
    grey_rng = random.Random(seed * 1_000_003 + lo + 500_000_003)
    imgs, caps, hards, tags = [], [], [], []
    for i in range(lo, hi):
        s = make_sample(i, cfg)
        objects = [asdict(o) for o in s.objects]
        image, caption = s.image, s.caption
        if grayscale and grey_rng.random() < grayscale:
            # A greyscale copy says nothing about colour: its captions (and hard negative) drop the colours.
            image = image.convert("L").convert("RGB")
            objects = [{**o, "colour": ""} for o in objects]
            caption = caption_for([("", o["kind"]) for o in objects if o["visible"] > 0], s.background)
        imgs.append(np.asarray(image))
        caps.append(caption)
        hards.append(hard_negative_caption(objects, s.background, rng))
        tags.append(caption_tags(objects))
    return np.stack(imgs), caps, hards, tags


def synthetic_caption_data(
    n: int,
    seed: int,
    *,
    size: int = 224,
    categories: Sequence[str] = ("weapon",),
    workers: int = 1,
    context_length: int = 77,
    grayscale: float = 0.0,
) -> CaptionData:
    """Draw ``n`` synthetic images with their captions straight into memory (no files).

    Pre-training wants far more images than are worth writing to disk (the demo backbone saw 100 000), and
    drawing is the slow part, so it runs in ``workers`` processes. The result depends only on ``(n, seed,
    size, categories, grayscale)``, not on ``workers``. A ``grayscale`` share of the images is turned grey,
    with the colour words left out of their captions, so that the features do not stand on colour alone
    (greyscale uploads exist); the other images are the same as with ``grayscale=0``.
    """
    jobs = [
        (seed, lo, min(n, lo + _STREAM_CHUNK), size, tuple(categories), grayscale) for lo in range(0, n, _STREAM_CHUNK)
    ]
    parts = map_in_processes(_caption_chunk, jobs, workers)
    imgs = np.concatenate([p[0] for p in parts])
    caps = [c for p in parts for c in p[1]]
    hards = [h for p in parts for h in p[2]]
    tags = [t for p in parts for t in p[3]]
    return _caption_data(imgs, caps, hards, tags, context_length)


def tag_tokens(context_length: int = 77) -> torch.Tensor:
    """Tokens of ``TAG_WORDS``, cut to their common length (see ``encode_text``)."""
    from open_clip.tokenizer import SimpleTokenizer

    t = SimpleTokenizer(context_length=context_length)([f"a {w}" for w in TAG_WORDS])
    return t[:, : int((t != 0).sum(1).max())].contiguous()
