"""The GPU path: bf16/fp16 pretraining steps through the real DeepSpeed engine, and a fine-tuning step
per task in autocast. Skipped without CUDA (benchmarks/gpu_check.sh runs them on a GPU machine)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from datascale.cli import main

import finetune_data
from test_pretrain_deepspeed import _metrics, _pretrain, pool  # noqa: F401  (module fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pretraining_steps_in_half_precision_through_the_engine(pool, tmp_path, precision):  # noqa: F811
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run = tmp_path / precision
    _pretrain(pool, run, "--set", "schedule.steps=2", "--set", f"deepspeed.precision={precision}",
              "--set", "schedule.eval_every=2", "--set", "schedule.checkpoint_every=2")
    ds = json.loads((run / "deepspeed.json").read_text())
    other = "fp16" if precision == "bf16" else "bf16"
    assert ds[precision]["enabled"] is True and ds[other]["enabled"] is False
    losses = [r["loss"] for r in _metrics(run) if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    final = json.loads((run / "metrics.json").read_text())
    assert 0 < final["metrics"]["eval"]["mAP@100"] <= 1
    weights = torch.load(run / "backbone.pt", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())  # exported fp32


@pytest.fixture(scope="module")
def downstream(tmp_path_factory):
    return finetune_data.write_all(tmp_path_factory.mktemp("gpu-downstream"))


@pytest.mark.parametrize("task", ["detection", "segmentation", "pose"])
def test_a_finetuning_step_per_task_in_autocast(downstream, tmp_path, task):
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    run = tmp_path / task
    assert main(["-q", "finetune", "--task", task, "--data", str(downstream / task), "--init", "random",
                 "--arch", "resnet_demo", "--steps", "2", "--out", str(run), "--set", "train.batch_size=4",
                 "--set", "train.log_every=1", "--set", f"train.precision={precision}"]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["loss"]) for line in lines if "loss" in line)
    result = json.loads((run / "metrics.json").read_text())
    assert all(math.isfinite(v) for values in result["metrics"].values() for v in values.values())
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # autocast keeps fp32 weights
