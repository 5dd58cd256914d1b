"""Each loss term against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dangerclip.modeling.losses import danger_loss, dice_loss, sigmoid_focal_loss


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_focal_by_hand():
    # logit 0 → p = 0.5; target 1: ce = ln 2, (1 - p_t)^2 = 0.25, alpha 0.25.
    v = sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]), alpha=0.25, gamma=2.0)
    assert v.item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    # logit 2, target 0: p = σ(2), ce = -ln(1 - p), p_t = 1 - p, weight 0.75.
    p = _sig(2.0)
    v = sigmoid_focal_loss(torch.tensor([2.0]), torch.tensor([0.0]), alpha=0.25, gamma=2.0)
    assert v.item() == pytest.approx(0.75 * p**2 * -math.log(1 - p), rel=1e-6)


def test_dice_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # p = 0.5 each
    m = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # 1 - (2 * 1.0 + 1) / (2.0 + 2.0 + 1)
    assert dice_loss(logits, m).item() == pytest.approx(1 - 3 / 5, rel=1e-6)


def test_total_weights_and_bce_by_hand():
    logits = torch.tensor([[1.0], [-1.0]])
    labels = torch.tensor([[1.0], [0.0]])
    maps = torch.zeros(1, 2, 1, 4)
    masks = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True], [True]])
    out = danger_loss(logits, maps, labels, masks, valid, weights=(1.0, 2.0, 1.0))
    bce = -math.log(_sig(1.0))  # both rows give the same value
    assert out["bce"].item() == pytest.approx(bce, rel=1e-6)
    f_pos, f_neg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    assert out["focal"].item() == pytest.approx((2 * f_pos + 6 * f_neg) / 8, rel=1e-6)
    d_row1 = 1 - 3 / 5
    # The second row's category is absent (all-zero mask): focal covers it, dice does not (ZegCLIP).
    assert out["dice"].item() == pytest.approx(d_row1, rel=1e-6)
    assert out["loss"].item() == pytest.approx(bce + 2 * out["focal"].item() + out["dice"].item(), rel=1e-6)


def test_rows_without_masks_add_no_dense_loss_and_keep_gradients():
    logits = torch.zeros(2, 1, requires_grad=True)
    maps = torch.randn(3, 2, 1, 5, requires_grad=True)
    out = danger_loss(logits, maps, torch.ones(2, 1), torch.ones(2, 1, 5), torch.zeros(2, 1, dtype=torch.bool))
    assert out["focal"].item() == 0 and out["dice"].item() == 0
    out["loss"].backward()
    assert maps.grad is not None and maps.grad.abs().sum() == 0


def test_layers_are_averaged():
    m1 = torch.full((1, 1, 1, 4), 3.0)
    m2 = torch.stack([m1[0], torch.full((1, 1, 4), -3.0)])
    masks = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    a = danger_loss(torch.zeros(1, 1), m1, torch.ones(1, 1), masks, valid)
    b = danger_loss(torch.zeros(1, 1), m2[1:], torch.ones(1, 1), masks, valid)
    both = danger_loss(torch.zeros(1, 1), m2, torch.ones(1, 1), masks, valid)
    assert both["focal"].item() == pytest.approx((a["focal"].item() + b["focal"].item()) / 2, rel=1e-6)
    assert both["dice"].item() == pytest.approx((a["dice"].item() + b["dice"].item()) / 2, rel=1e-6)


def test_dice_covers_present_categories_only_and_negatives_still_teach_the_map_to_stay_dark():
    torch.manual_seed(0)
    labels = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    masks = torch.zeros(4, 1, 16)
    masks[0, 0, :4] = 1
    valid = torch.ones(4, 1, dtype=torch.bool)
    maps = torch.full((2, 4, 1, 16), -2.0)
    only_pos = danger_loss(torch.zeros(1, 1), maps[:, :1], labels[:1], masks[:1], valid[:1])
    with_negs = danger_loss(torch.zeros(4, 1), maps, labels, masks, valid)
    # Three negatives at the starting bias leave the positive's dice unchanged (before: diluted by 0.96s).
    assert with_negs["dice"].item() == pytest.approx(only_pos["dice"].item(), rel=1e-6)
    # ...while their focal term still pulls a lit-up negative map down.
    lit = maps.clone()
    lit[:, 1:] = 3.0
    assert danger_loss(torch.zeros(4, 1), lit, labels, masks, valid)["focal"] > with_negs["focal"]
    # No present category at all: dice is 0, and differentiable.
    none = danger_loss(torch.zeros(3, 1), maps[:, 1:].clone().requires_grad_(), labels[1:], masks[1:], valid[1:])
    assert none["dice"].item() == 0.0
    none["loss"].backward()
