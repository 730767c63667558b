"""Frozen mode keeps conv1..conv4 (weights and batch-norm statistics) fixed; fine-tune mode trains them."""

from __future__ import annotations

import pytest
import torch

from datascale.config import load_config
from datascale.metrics_log import MetricsLog
from scaling.finetune.loop import initial_backbone, prepare, train
from scaling.models.backbones import build_backbone
from scaling.models.files import save_backbone
from scaling.tasks import get_task
from scaling.tasks.config import FinetuneConfig

import finetune_data
from finetune_data import cpu_threads  # noqa: F401  (autouse fixture)

DATASETS = {"detection": "detection", "detection-fpn": "detection", "segmentation": "segmentation",
            "pose": "pose"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = finetune_data.write_all(tmp_path_factory.mktemp("downstream"))
    torch.manual_seed(0)
    save_backbone(build_backbone("resnet_demo"), root / "backbone", {"num_classes": 5})
    return root


def _train(world, tmp_path, variant: str, mode: str, *extra: str):
    task_name = variant.split("-")[0]
    overrides = [f"mode={mode}", f"backbone={world / 'backbone'}", f"data.root={world / DATASETS[variant]}",
                 "train.steps=2", "train.batch_size=2", "train.warmup_steps=0", "train.lr=0.05",
                 "data.image_size=64", "pose.input_size=32", *extra]
    if variant == "detection-fpn":
        overrides += ["detection.fpn=true", "detection.anchor_sizes=[16,32,64,128,256]", "detection.roi_output_size=7"]
    cfg = load_config(FinetuneConfig, f"finetune/{task_name}", overrides)
    task = get_task(task_name)
    backbone, meta = initial_backbone(cfg, task.dilation(cfg))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model, train_set, _ = prepare(task, cfg, backbone, meta)
    train(task, model, train_set, cfg, MetricsLog(tmp_path / "metrics.jsonl"), {"step": 0})
    after = backbone.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _early(keys):
    return {k for k in keys if not k.startswith("layer4.")}


@pytest.mark.parametrize("variant", list(DATASETS))
def test_frozen_mode_changes_nothing_before_conv5(world, tmp_path, variant):
    changed = _train(world, tmp_path, variant, "frozen")
    assert _early(changed) == set()
    assert any(k.startswith("layer4.") and "running_mean" not in k for k in changed)  # conv5 trains


@pytest.mark.parametrize("variant", list(DATASETS))
def test_finetune_mode_trains_weights_and_statistics_before_conv5(world, tmp_path, variant):
    changed = _early(_train(world, tmp_path, variant, "finetune"))
    assert "conv1.weight" in changed and "layer3.0.conv1.weight" in changed
    assert "bn1.running_mean" in changed and "layer2.0.bn1.running_var" in changed


def test_finetune_mode_can_keep_pretrained_statistics(world, tmp_path):
    changed = _train(world, tmp_path, "segmentation", "finetune", "train.bn_stats=frozen")
    assert "layer2.0.conv1.weight" in changed
    assert not {k for k in changed if "running_" in k or "num_batches" in k}
