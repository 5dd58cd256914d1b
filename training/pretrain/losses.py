"""The pre-training objectives: symmetric InfoNCE with hard negatives, and word grounding on the dense tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
