"""The pretraining learning-rate schedules: warm-up, then step decay or a cosine to zero."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from datascale.config import load_config
from scaling.pretrain.config import PretrainConfig
from scaling.pretrain.loop import build_optimizer


def _lrs(cfg: PretrainConfig) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(cfg, model)
    lrs = []
    for _ in range(cfg.schedule.steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _config(**optim) -> PretrainConfig:
    cfg = load_config(PretrainConfig, "pretrain/demo", ["data.train=x", "data.eval=y", "schedule.steps=100"])
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=10, lr=0.1, **optim))


def test_cosine_warms_up_then_anneals_to_zero_by_the_last_step():
    lrs = _lrs(_config(lr_schedule="cosine"))
    assert lrs[0] == pytest.approx(0.01)        # warm-up: (step + 1) / 10
    assert max(lrs) == pytest.approx(0.1, rel=0.05)
    assert lrs[50] == pytest.approx(0.05, rel=0.05)  # half-way down
    assert lrs[-1] < 0.001
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # never rises after warm-up


def test_step_decay_multiplies_every_period():
    lrs = _lrs(_config(lr_schedule="step", lr_decay=0.1, lr_decay_every=40))
    assert lrs[20] == pytest.approx(0.1) and lrs[45] == pytest.approx(0.01) and lrs[85] == pytest.approx(0.001)
