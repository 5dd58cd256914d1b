"""Contrastive image–caption pre-training of a small CLIP on synthetic captions (``dangerclip pretrain``).

Why this exists: the offline demo runs on a small CLIP for which no public weights exist. A head on a
*randomly initialised* frozen backbone cannot learn much, because random patch tokens carry almost no object
information (a linear probe separates weapon patches with AUROC ≈ 0.57–0.67). Real CLIP gets its features
from contrastive image–text training, so the demo backbone does the same on the synthetic set's captions
("a red pistol and a blue circle on a striped background"), and is then frozen for head training exactly as
the paper freezes ViT-B/16.

How much it takes (measured; see the ``demo_model`` docstring): the ``tiny`` config (linear 16×16 patch
embedding, 2 layers) barely learns shapes at all, even supervised on the weapon label (test AUROC 0.65 after
200 000 image views, ``bench/learnability.py``), so the demo uses the ``demo`` config, a hybrid ViT with a
convolutional stem (``dangerclip.backbone.ConvStem``). Its patch tokens reach probe AUROC 0.984 (random
init: 0.669) after 1.28 million image views of this pre-training (5 000 steps of 256): six minutes on an H100
(``device="cuda"``, bfloat16 autocast), about 16 hours on 2 CPU cores (22 views/s). The images are drawn
in memory by ``synthetic_caption_data`` (several processes), not written to disk.

What is trained and how:

* the whole CLIP (both towers), symmetric InfoNCE on the global embeddings (open_clip's ``ClipLoss``);
* *hard-negative captions* (as in NegCLIP): each image also meets its own caption with one object's noun
  swapped between the weapon and distractor vocabularies ("a red *bottle* and a blue circle ..."). Colours
  and backgrounds alone then no longer identify the caption, so the towers must learn the shapes;
* a *dense-pooled* contrastive term: the mean of the MaskCLIP dense patch tokens (the tokens the DangerCLIP
  head reads, see ``dangerclip.backbone.DenseCLIP.encode_dense``) is contrasted with the caption too, so the
  dense path is trained towards the joint space rather than being a by-product of the class token;
* a *word-grounding* term (``WordGrounding``): each caption noun, and its hypernym from a fixed word
  hierarchy (a pistol is a weapon), is matched against every patch token with a sigmoid loss and a smooth
  maximum over patches, as multiple-instance learning. A word can only score where some patch matches it,
  so object identity has to reach the dense tokens; this is what makes a short run useful to the head.

No masks and no dataset labels are used: the only supervision is the caption text, as for CLIP (the word
``weapon`` enters only as the hypernym of nouns the caption names). Pre-training
images must come from a set disjoint from the head's evaluation split (``demo_model`` uses another seed).

The result is a state dict of an open_clip ``CLIP`` of a DangerCLIP config (``tiny``, ``demo``), saved as
safetensors, which ``dangerclip.factory.create_model(NAME, pretrained=PATH)`` loads. ``linear_probe``
measures what it learnt: a logistic regression on frozen patch tokens, weapon vs other patches, AUROC on
held-out images.

This is a demonstration backbone for synthetic data, not a claim about real images.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dangerclip.card import OPENAI_MEAN, OPENAI_STD
from training.files import atomic_path
from training.metrics import roc_auc
from training.runtime import map_in_processes, resolve_device
from training.synth import DISTRACTOR_KINDS, WEAPON_KINDS, caption_for

log = logging.getLogger(__name__)

TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 224,
        "patch_size": 16,
        "width": 128,
        "layers": 2,
        "head_width": 32,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
"""The ``tiny`` config's ``clip`` section; used only when ``dangerclip.factory`` is not importable."""


def tiny_clip_config(name: str = "tiny") -> dict[str, Any]:
    """open_clip's ``embed_dim``/``vision_cfg``/``text_cfg`` for a DangerCLIP config name."""
    try:
        from dangerclip.factory import get_config
    except ImportError:  # the factory is optional for pre-training; the config is fixed and small
        if name != "tiny":
            raise
        return json.loads(json.dumps(TINY_CLIP_CFG))
    clip_cfg = get_config(name)["clip"]
    if "open_clip" in clip_cfg:
        raise ValueError(
            f"config {name!r} names a public open_clip architecture; pre-train custom configs only"
        )
    return clip_cfg


def build_clip(name: str = "tiny", seed: int = 0) -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` of a DangerCLIP config (``tiny`` by default)."""
    from dangerclip.backbone import build_clip as build

    cfg = tiny_clip_config(name)
    torch.manual_seed(seed)
    return build(cfg)


# ----------------------------------------------------------------------------------------------------
# Data


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


def _read_rows(manifest: Path, splits: Sequence[str] | None) -> list[dict[str, Any]]:
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
    rows = _read_rows(manifest, splits)[:limit]
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
    from training.synth import SynthConfig, caption_for, make_sample

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
        (seed, lo, min(n, lo + _STREAM_CHUNK), size, tuple(categories), grayscale)
        for lo in range(0, n, _STREAM_CHUNK)
    ]
    parts = map_in_processes(_caption_chunk, jobs, workers)
    imgs = np.concatenate([p[0] for p in parts])
    caps = [c for p in parts for c in p[1]]
    hards = [h for p in parts for h in p[2]]
    tags = [t for p in parts for t in p[3]]
    return _caption_data(imgs, caps, hards, tags, context_length)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """``[B, S, S, 3]`` uint8 → ``[B, 3, S, S]`` float32 with CLIP's mean/std (as ``dangerclip.preprocess``)."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------------
# Model pieces


def dense_tokens(
    clip: nn.Module, images: torch.Tensor, keep: int | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-token embedding and MaskCLIP dense patch tokens, with gradients.

    The same computation as ``dangerclip.backbone.DenseCLIP.encode_dense`` (which runs without gradients),
    so what is trained here is exactly what the head will read.

    Args:
        images: ``[B, 3, S, S]`` normalised images.
        keep: if set, only this many randomly chosen patch tokens per image enter the transformer (FLIP's
            token masking: the same 224 px / 16 px geometry at a fraction of the cost).
        generator: random source for the kept tokens.

    Returns:
        ``g [B, D]`` (``encode_image``, not normalised) and ``patches [B, N', D]`` (``N' = keep`` or ``N``).
    """
    v = clip.visual
    x = v._embeds(images)  # [B, 1+N, W]
    if keep is not None and keep < x.shape[1] - 1:
        b, n1, w = x.shape
        idx = (torch.rand(b, n1 - 1, generator=generator).argsort(1)[:, :keep] + 1).to(x.device)
        x = torch.cat([x[:, :1], x.gather(1, idx.unsqueeze(-1).expand(b, keep, w))], 1)
    blocks = v.transformer.resblocks
    for blk in blocks[:-1]:
        x = blk(x)
    last = blocks[-1]
    y = last.ln_1(x)
    w_v = last.attn.in_proj_weight.chunk(3, dim=0)[2]
    b_v = last.attn.in_proj_bias.chunk(3, dim=0)[2]
    cls = x[:, :1] + last.ls_1(last.attn(y[:, :1], y, y, need_weights=False)[0])
    cls = cls + last.ls_2(last.mlp(last.ln_2(cls)))
    pt = x[:, 1:] + last.ls_1(last.attn.out_proj(F.linear(y[:, 1:], w_v, b_v)))
    pt = pt + last.ls_2(last.mlp(last.ln_2(pt)))
    return v.ln_post(cls[:, 0]) @ v.proj, v.ln_post(pt) @ v.proj


def encode_text(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text`` for tokens cut to a shorter context (not normalised).

    Under the causal mask, the end-of-text position sees only the tokens before it, so cutting the padding
    changes nothing but the cost (captions are about 30 tokens of the 77).

    Args:
        tokens: ``[B, L]`` with ``L <= context_length``; every row must hold its end-of-text token.
    """
    n = tokens.shape[1]
    x = clip.token_embedding(tokens) + clip.positional_embedding[:n]
    x = clip.transformer(x, attn_mask=clip.attn_mask[:n, :n])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ clip.text_projection


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, hard: torch.Tensor | None, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE; image→text also ranks each image's hard-negative caption (and everyone else's).

    Args:
        img: ``[B, D]`` normalised image embeddings.
        txt: ``[B, D]`` normalised caption embeddings.
        hard: ``[B, D]`` normalised hard-negative caption embeddings, or None.
        logit_scale: scalar (already exponentiated).
    """
    target = torch.arange(img.shape[0], device=img.device)
    texts = txt if hard is None else torch.cat([txt, hard])
    logits_i = logit_scale * img @ texts.t()  # [B, B or 2B]
    logits_t = logit_scale * txt @ img.t()  # [B, B]
    return 0.5 * (F.cross_entropy(logits_i, target) + F.cross_entropy(logits_t, target))


class WordGrounding(nn.Module):
    """Word-level image–text matching on the dense tokens (SigLIP-style sigmoid loss, MIL over patches).

    For every caption word ``w`` (its text-tower embedding ``t_w``) and patch ``i``, the logit is
    ``s · cos(patch_i, t_w) + b``; an image's logit for ``w`` is a smooth maximum over its patches, trained
    with BCE against "the caption names ``w``". The only supervision is the caption's words, as for CLIP,
    but it reaches every patch token: a word can only score high where some patch matches it, which is what
    makes the dense tokens (the ones the DangerCLIP head reads) carry object identity.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-2.0))

    def forward(
        self, patches: torch.Tensor, words: torch.Tensor, tags: torch.Tensor, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        """BCE of the pooled word logits (plus, with ``g``, of the global embedding's word logits).

        Args:
            patches: ``[B, N, D]`` dense tokens.
            words: ``[V, D]`` text embeddings of ``TAG_WORDS``.
            tags: ``[B, V]`` 0/1 targets.
            g: ``[B, D]`` global embeddings, matched against the words too (SigLIP on words).
        """
        w = F.normalize(words, dim=-1)
        sim = F.normalize(patches, dim=-1) @ w.t()  # [B, N, V]
        logits = self.log_scale.exp() * sim + self.bias
        pooled = torch.logsumexp(logits, dim=1) - math.log(patches.shape[1])
        loss = F.binary_cross_entropy_with_logits(pooled, tags)
        if g is not None:
            glog = self.log_scale.exp() * (F.normalize(g, dim=-1) @ w.t()) + self.bias
            loss = loss + F.binary_cross_entropy_with_logits(glog, tags)
        return loss


def tag_tokens(context_length: int = 77) -> torch.Tensor:
    """Tokens of ``TAG_WORDS``, cut to their common length (see ``encode_text``)."""
    from open_clip.tokenizer import SimpleTokenizer

    t = SimpleTokenizer(context_length=context_length)([f"a {w}" for w in TAG_WORDS])
    return t[:, : int((t != 0).sum(1).max())].contiguous()


# ----------------------------------------------------------------------------------------------------
# Training


@dataclass
class PretrainConfig:
    """Options of a pre-training run.

    Attributes:
        steps: optimiser steps.
        batch_size: images per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to 10 %).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay (not on gains, biases, embeddings, logit scale).
        hard_negatives: add one hard-negative caption per image.
        clip_weight: weight of the global (class-token) contrastive term.
        dense_weight: weight of the dense-pooled contrastive term (0 disables it).
        tag_weight: weight of the word-grounding term (0 disables it).
        global_words: also match the caption words against the global embedding (SigLIP on words).
        flip: random horizontal flips (captions do not mention left/right).
        mask_ratio: share of patch tokens dropped per image in training (FLIP, Li et al. 2023); evaluation and
            the saved model use all tokens.
        seed: seeds initialisation, batching and flips.
        time_limit_s: stop early after this much wall time (the run still saves).
        log_every: log the loss every this many steps.
        device: ``cpu``, ``cuda`` or ``auto``; on CUDA the forward passes run in bfloat16 autocast.
        decay_steps: horizon of the cosine decay (0: ``steps``); a longer one keeps the rate near its peak.
    """

    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 40
    weight_decay: float = 0.1
    hard_negatives: bool = True
    clip_weight: float = 1.0
    dense_weight: float = 0.5
    tag_weight: float = 1.0
    global_words: bool = False
    flip: bool = True
    mask_ratio: float = 0.5
    seed: int = 0
    time_limit_s: float = 0.0
    log_every: int = 25
    device: str = "cpu"
    decay_steps: int = 0


@dataclass
class PretrainResult:
    """What a run did: per-step losses and timings."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    def summary(self, window: int = 20) -> dict[str, Any]:
        w = max(1, min(window, len(self.losses) // 2 or 1))
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "stopped_early": self.stopped_early,
            "loss_first": float(np.mean(self.losses[:w])) if self.losses else None,
            "loss_last": float(np.mean(self.losses[-w:])) if self.losses else None,
        }


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # As open_clip's trainer: no decay on gains, biases, embeddings and the temperature.
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(clip: nn.Module, data: CaptionData, cfg: PretrainConfig) -> PretrainResult:
    """Train ``clip`` in place on image–caption pairs.

    Args:
        clip: an open_clip ``CLIP`` (its image size must match the data).
        data: images and tokens from ``load_caption_data``.
        cfg: options.

    Returns:
        Per-step losses (the total of the global and dense terms).
    """
    g = torch.Generator().manual_seed(cfg.seed)
    n = len(data)
    bs = min(cfg.batch_size, n)
    device = resolve_device(cfg.device)
    clip.to(device)
    grounding = WordGrounding().to(device)
    groups = _param_groups(clip, cfg.weight_decay)
    groups[1]["params"] = groups[1]["params"] + list(grounding.parameters())
    words = tag_tokens().to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    use_tags = cfg.tag_weight > 0 and data.tags is not None
    weights = {"clip": cfg.clip_weight, "dense": cfg.dense_weight, "words": cfg.tag_weight}
    if cfg.clip_weight <= 0 and cfg.dense_weight <= 0 and not use_tags:
        raise ValueError("every pre-training term has weight 0")
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, (cfg.decay_steps or cfg.steps) - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    n_patches = int(clip.visual.grid_size[0] * clip.visual.grid_size[1])
    keep = max(1, round(n_patches * (1 - cfg.mask_ratio))) if cfg.mask_ratio > 0 else None
    clip.train()
    res = PretrainResult()
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=g)
    pos = 0
    for step in range(cfg.steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + bs]
        pos += bs
        x = normalise(data.images[idx].to(device, non_blocking=True))
        if cfg.flip:
            flip = (torch.rand(bs, generator=g) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        terms: dict[str, torch.Tensor] = {}
        with amp:
            gvec, patches = dense_tokens(clip, x, keep=keep, generator=g)
            if cfg.clip_weight > 0 or cfg.dense_weight > 0:
                tok = data.tokens[idx].to(device)
                if cfg.hard_negatives:
                    both = torch.cat([tok, data.hard_tokens[idx].to(device)])
                    t_all = F.normalize(encode_text(clip, both).float(), dim=-1)
                    txt, hard = t_all[:bs], t_all[bs:]
                else:
                    txt, hard = F.normalize(encode_text(clip, tok).float(), dim=-1), None
                scale = clip.logit_scale.exp().clamp(max=100.0)
                if cfg.clip_weight > 0:
                    terms["clip"] = contrastive_loss(F.normalize(gvec.float(), dim=-1), txt, hard, scale)
                if cfg.dense_weight > 0:
                    pooled = F.normalize(patches.float().mean(1), dim=-1)
                    terms["dense"] = contrastive_loss(pooled, txt, hard, scale)
            if use_tags:
                assert data.tags is not None
                terms["words"] = grounding(
                    patches.float(),
                    encode_text(clip, words).float(),
                    data.tags[idx].to(device),
                    gvec.float() if cfg.global_words else None,
                )
        loss = torch.stack([weights[k] * v for k, v in terms.items()]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            # As CLIP: the temperature may not exceed 100.
            clip.logit_scale.clamp_(0, math.log(100))
        res.losses.append(float(loss.item()))
        res.steps = step + 1
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            log.info(
                "pretrain step %d/%d loss %.4f (%s) lr %.2e scale %.1f (%.1f s)",
                step + 1,
                cfg.steps,
                res.losses[-1],
                " ".join(f"{k} {v.item():.3f}" for k, v in terms.items()),
                lr_at(step),
                float(clip.logit_scale.exp().detach()),
                time.perf_counter() - t0,
            )
        if cfg.time_limit_s and time.perf_counter() - t0 > cfg.time_limit_s:
            log.warning("pretrain: time limit %.0f s reached after %d steps", cfg.time_limit_s, step + 1)
            res.stopped_early = True
            break
    clip.eval().cpu()
    res.seconds = time.perf_counter() - t0
    return res


@torch.no_grad()
def contrastive_eval(clip: nn.Module, data: CaptionData, batch_size: int = 64) -> dict[str, float]:
    """Held-out retrieval: image→caption top-1 accuracy within batches, and the hard-negative accuracy.

    Returns:
        ``{"retrieval_top1", "hard_negative_acc", "loss"}``; hard-negative accuracy is the share of images
        closer to their own caption than to its noun-swapped version (0.5 is chance).
    """
    clip.eval()
    top1, hard_ok, losses, n = 0, 0, [], 0
    for s in range(0, len(data), batch_size):
        sl = slice(s, s + batch_size)
        img = F.normalize(clip.encode_image(normalise(data.images[sl])), dim=-1)
        txt = F.normalize(encode_text(clip, data.tokens[sl]), dim=-1)
        hard = F.normalize(encode_text(clip, data.hard_tokens[sl]), dim=-1)
        sim = img @ txt.t()
        top1 += int((sim.argmax(1) == torch.arange(len(img))).sum())
        hard_ok += int(((img * txt).sum(1) > (img * hard).sum(1)).sum())
        losses.append(float(contrastive_loss(img, txt, hard, clip.logit_scale.exp())) * len(img))
        n += len(img)
    return {"retrieval_top1": top1 / n, "hard_negative_acc": hard_ok / n, "loss": sum(losses) / n}


def save_clip(clip: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Save the full CLIP state dict as safetensors (``create_model(name, pretrained=path)`` loads it)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in clip.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=dict(metadata or {}))
    return path


def load_clip(path: str | Path, name: str = "tiny") -> nn.Module:
    """A CLIP of config ``name`` with the weights of ``path`` (strict: every key and shape must match)."""
    from safetensors.torch import load_file

    clip = build_clip(name)
    sd = load_file(str(path))
    clip.load_state_dict(sd, strict=True)
    return clip.eval()


# ----------------------------------------------------------------------------------------------------
# Linear probe on patch tokens


@torch.no_grad()
def patch_features(
    clip: nn.Module,
    manifest: str | Path,
    *,
    category: str = "weapon",
    limit: int = 200,
    splits: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense patch tokens and patch labels for the rows of a synthetic manifest.

    Returns:
        ``feats [M, N, D]`` float32, ``cover [M, N]`` the fraction of each patch covered by the category's
        exact mask, and ``image_label [M]``.
    """
    manifest = Path(manifest)
    rows = _read_rows(manifest, splits)[:limit]
    size = int(
        clip.visual.image_size[0]
        if isinstance(clip.visual.image_size, (tuple, list))
        else clip.visual.image_size
    )
    gh, gw = clip.visual.grid_size
    feats, covers, labels = [], [], []
    clip.eval()
    for s in range(0, len(rows), 64):
        chunk = rows[s : s + 64]
        imgs = np.stack(
            [
                np.asarray(Image.open(manifest.parent / r["image"]).convert("RGB").resize((size, size)))
                for r in chunk
            ]
        )
        _, p = dense_tokens(clip, normalise(torch.from_numpy(imgs)))
        feats.append(p.numpy().astype(np.float32))
        for r in chunk:
            m = np.asarray(
                Image.open(manifest.parent / r["mask"][category]).convert("L").resize((size, size)),
                np.float32,
            )
            m = (m > 127).astype(np.float32)
            covers.append(m.reshape(gh, size // gh, gw, size // gw).mean(axis=(1, 3)).reshape(-1))
            labels.append(int(r["labels"][category]))
    return np.concatenate(feats), np.stack(covers), np.asarray(labels)


def linear_probe(
    feats: np.ndarray,
    cover: np.ndarray,
    *,
    on: float = 0.5,
    train_fraction: float = 0.5,
    seed: int = 0,
    steps: int = 300,
) -> dict[str, float]:
    """Logistic regression on frozen patch tokens: weapon patches vs all other patches.

    Patches covered at least ``on`` are positive, uncovered patches negative, partly covered ones are left
    out. The probe trains on the first ``train_fraction`` of the images and is scored on the rest, so the
    AUROC measures features, not memorised images.

    Args:
        feats: ``[M, N, D]`` patch tokens.
        cover: ``[M, N]`` mask coverage per patch.

    Returns:
        ``{"auroc", "n_train_patches", "n_test_patches", "positive_rate"}``.
    """
    m = feats.shape[0]
    cut = max(1, int(m * train_fraction))

    def xy(sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        f, c = feats[sl].reshape(-1, feats.shape[-1]), cover[sl].reshape(-1)
        keep = (c >= on) | (c == 0)
        return torch.from_numpy(f[keep]).float(), torch.from_numpy((c[keep] >= on).astype(np.float32))

    xtr, ytr = xy(slice(0, cut))
    xte, yte = xy(slice(cut, m))
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    torch.manual_seed(seed)
    lin = nn.Linear(xtr.shape[1], 1)
    pos_w = (1 - ytr.mean()) / ytr.mean().clamp(min=1e-6)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(lin(xtr).squeeze(1), ytr, pos_weight=pos_w)
        loss = loss + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        s = lin(xte).squeeze(1).numpy()
    return {
        "auroc": roc_auc(s, yte.numpy().astype(int)),
        "n_train_patches": int(len(ytr)),
        "n_test_patches": int(len(yte)),
        "positive_rate": float(yte.mean()),
    }


def probe(
    clip: nn.Module, manifest: str | Path, *, limit: int = 200, category: str = "weapon"
) -> dict[str, float]:
    """``linear_probe`` on ``limit`` held-out (``val``/``test``) images of a synthetic manifest."""
    feats, cover, _ = patch_features(clip, manifest, category=category, limit=limit, splits=("val", "test"))
    return linear_probe(feats, cover)


# ----------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PretrainConfig()
    parser.add_argument("manifest", help="synthetic manifest.jsonl (from 'dangerclip synth') with captions")
    parser.add_argument("-o", "--out", required=True, help="output CLIP weights (.safetensors)")
    parser.add_argument(
        "--config", default="tiny", help="DangerCLIP model config to pre-train (default tiny)"
    )
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--dense-weight", type=float, default=d.dense_weight, help="dense-pooled term weight")
    parser.add_argument(
        "--clip-weight", type=float, default=d.clip_weight, help="global contrastive term weight"
    )
    parser.add_argument("--tag-weight", type=float, default=d.tag_weight, help="word-grounding term weight")
    parser.add_argument("--global-words", action="store_true", help="word term on the global embedding too")
    parser.add_argument(
        "--mask-ratio", type=float, default=d.mask_ratio, help="FLIP token masking in training"
    )
    parser.add_argument(
        "--no-hard-negatives", action="store_true", help="plain CLIP loss, no swapped captions"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    parser.add_argument(
        "--time-limit", type=float, default=0.0, help="stop after this many seconds (0: none)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda or auto (CUDA when present; bfloat16 autocast there)"
    )
    parser.add_argument("--probe", default=None, help="manifest whose val/test images the linear probe uses")
    parser.add_argument("--probe-images", type=int, default=200)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        hard_negatives=not args.no_hard_negatives,
        dense_weight=args.dense_weight,
        clip_weight=args.clip_weight,
        mask_ratio=args.mask_ratio,
        tag_weight=args.tag_weight,
        global_words=args.global_words,
        seed=args.seed,
        time_limit_s=args.time_limit,
        device=args.device,
    )
    clip = build_clip(args.config, seed=args.seed)
    size = int(tiny_clip_config(args.config)["vision_cfg"]["image_size"])
    data = load_caption_data(
        args.manifest, image_size=size, splits=("train",), seed=args.seed, limit=args.limit
    )
    report: dict[str, Any] = {"config": asdict(cfg), "images": len(data)}
    if args.probe:
        report["probe_before"] = probe(clip, args.probe, limit=args.probe_images)
    res = pretrain(clip, data, cfg)
    report["train"] = res.summary()
    held = load_caption_data(
        args.manifest, image_size=size, splits=("val", "test"), seed=args.seed + 1, limit=512
    )
    report["heldout"] = contrastive_eval(clip, held)
    if args.probe:
        report["probe_after"] = probe(clip, args.probe, limit=args.probe_images)
    save_clip(clip, args.out, metadata={"dangerclip.pretrain": json.dumps(report)})
    print(json.dumps(report, indent=2))
    return 0
