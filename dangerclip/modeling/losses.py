"""DangerCLIP's objective: ``α·BCE(image labels) + β·focal(maps) + γ·dice(maps)``, α, β, γ = 1, 2, 1.

The dense terms compare each layer's calibrated attention row (per-patch log-odds) with the pseudo-mask on
the patch grid, and are averaged over layers, as the paper supervises every self-attention module. Rows
without a mask (``mask_valid`` False) add no dense loss. As in ZegCLIP and MaskFormer, focal covers every row
with a mask — negatives' all-zero masks included, which teach the map to stay dark — and dice only the rows whose
category is present: on an empty target dice is ``Σp / (Σp + 1)``, 0.96 at the starting bias, so a batch of
negatives would otherwise drown the dice of the few positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_WEIGHTS = (1.0, 2.0, 1.0)


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise focal loss (Lin et al.) on logits; ``alpha < 0`` disables class weighting.

    Returns the un-reduced loss, same shape as ``logits``.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss per row: ``1 - (2·Σpm + s) / (Σp + Σm + s)`` over the last dimension."""
    p = torch.sigmoid(logits)
    num = 2 * (p * targets).sum(-1) + smooth
    den = p.sum(-1) + targets.sum(-1) + smooth
    return 1 - num / den


def danger_loss(
    logits: torch.Tensor,
    map_logits: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    mask_valid: torch.Tensor,
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """The total loss and its terms.

    Args:
        logits: ``[B, k]`` image-level log-odds.
        map_logits: ``[L, B, k, N]`` (or ``[B, k, N]``) per-patch log-odds.
        labels: ``[B, k]`` 0/1 image labels.
        masks: ``[B, k, N]`` pseudo-masks on the patch grid, values in [0, 1].
        mask_valid: ``[B, k]`` bool, whether row ``(b, c)`` has a mask to learn from.
        weights: ``(α, β, γ)`` for BCE, focal and dice; ``β = γ = 0`` is the paper's no-dense ablation.

    Returns:
        ``{"loss", "bce", "focal", "dice"}``, scalars; the dense terms are 0 when no row has a mask, dice is 0
        when no row's category is present.
    """
    if map_logits.dim() == 3:
        map_logits = map_logits.unsqueeze(0)
    labels = labels.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    valid = mask_valid.to(torch.bool)
    n_valid = int(valid.sum())
    if n_valid == 0 or (weights[1] == 0 and weights[2] == 0):
        zero = map_logits.sum() * 0.0
        focal = dice = zero
    else:
        sel = map_logits[:, valid]  # [L, V, N]
        tgt = masks[valid].to(sel.dtype).unsqueeze(0).expand_as(sel)
        focal = sigmoid_focal_loss(sel, tgt, focal_alpha, focal_gamma).mean()
        present = masks[valid].sum(-1) > 0  # [V]
        dice = dice_loss(sel[:, present], tgt[:, present]).mean() if bool(present.any()) else sel.sum() * 0.0
    a, b, c = weights
    return {"loss": a * bce + b * focal + c * dice, "bce": bce, "focal": focal, "dice": dice}
