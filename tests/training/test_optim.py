"""The pieces the head, pre-training and baseline loops share: schedule, parameter groups, optimiser step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.optim import OptimStep, amp_setup, lr_factor, param_groups, warmup_cosine


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = warmup_cosine(opt, total=100, warmup=10, min_ratio=0.1)
    seen = []
    for _ in range(120):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(3e-4 / 10) and seen[9] == pytest.approx(3e-4)
    assert seen[100] == pytest.approx(3e-5) and seen[119] == pytest.approx(3e-5)
    # The formula pre-training wrote out by hand: cosine to 10 % over the decay horizon after the warm-up.
    for step, lr in enumerate(seen):
        t = (step - 10) / 90
        hand = 3e-4 * (step + 1) / 10 if step < 10 else 3e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
        assert lr == pytest.approx(hand, rel=1e-12)
    assert lr_factor(0, 10, 0, 0.0) == 1.0 and lr_factor(10, 10, 0, 0.0) == pytest.approx(0.0)


class _Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(4, 3)
        self.proj = nn.Linear(3, 3)
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_decay_only_on_weight_matrices() -> None:
    t = _Tower()
    names = {id(p): n for n, p in t.named_parameters()}
    decay, no_decay = param_groups(t, 0.1)
    assert [names[id(p)] for p in decay["params"]] == ["proj.weight"] and decay["weight_decay"] == 0.1
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["logit_scale", "proj.bias", "token_embedding.weight"]
    assert no_decay["weight_decay"] == 0.0


def test_step_clips_steps_and_schedules() -> None:
    p = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, total=2, warmup=0, min_ratio=0.0)
    step = OptimStep(opt, [p], max_norm=1.0, scheduler=sched)
    norm = step((p * p.detach()).sum())  # gradient = p = (3, 4), norm 5, clipped to 1
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - 0.6, 4.0 - 0.8]))
    assert step.lr == pytest.approx(0.5)  # half way down the cosine


def test_mixed_precision_only_on_a_gpu() -> None:
    assert amp_setup("auto", torch.device("cpu")) == (None, False)
    assert amp_setup("off", torch.device("cuda")) == (None, False)
    assert amp_setup("bf16", torch.device("cuda")) == (torch.bfloat16, False)
