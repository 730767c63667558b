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
    changed = _early(_train(world, tmp_path, variant, "finetune", "train.bn_stats=update"))
    assert "conv1.weight" in changed and "layer3.0.conv1.weight" in changed
    assert "bn1.running_mean" in changed and "layer2.0.bn1.running_var" in changed


def test_finetune_mode_can_keep_pretrained_statistics(world, tmp_path):
    changed = _train(world, tmp_path, "segmentation", "finetune", "train.bn_stats=frozen")
    assert "layer2.0.conv1.weight" in changed
    assert not {k for k in changed if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_bn_stats_frozen_keeps_every_statistic_in_both_modes(world, tmp_path, mode):
    # The modes differ only in which weights train: with bn_stats=frozen conv5's
    # statistics stay fixed in frozen mode too (they used to follow RoI batches).
    changed = _train(world, tmp_path, "detection", mode, "train.bn_stats=frozen")
    assert not {k for k in changed if "running_" in k or "num_batches" in k}
    assert any(k.startswith("layer4.") and k.endswith("weight") for k in changed)


def test_frozen_mode_with_bn_update_updates_only_conv5_statistics(world, tmp_path):
    changed = _train(world, tmp_path, "segmentation", "frozen", "train.bn_stats=update")
    stats = {k for k in changed if "running_" in k}
    assert stats and all(k.startswith("layer4.") for k in stats)


@pytest.mark.parametrize("variant", ["detection", "segmentation", "pose"])
def test_random_init_gets_batchnorm_statistics_from_downstream_images(world, variant):
    task_name = variant
    cfg = load_config(FinetuneConfig, f"finetune/{task_name}", [
        "mode=frozen", "init=random", "arch=resnet_demo", f"data.root={world / DATASETS[variant]}",
        "train.batch_size=2", "train.random_bn_batches=2", "data.image_size=64", "pose.input_size=32"])
    task = get_task(task_name)
    backbone, meta = initial_backbone(cfg, task.dilation(cfg))
    weights = {k: v.clone() for k, v in backbone.state_dict().items() if "running" not in k and "num_batches" not in k}
    prepare(task, cfg, backbone, meta)
    state = backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())  # only statistics move
    # (0, 1) at init; estimated ones are the inputs' own: a random ResNet's variances grow with depth.
    assert not torch.allclose(state["bn1.running_var"], torch.ones_like(state["bn1.running_var"]))
    deep = state["layer4.1.bn2.running_var"] if "layer4.1.bn2.running_var" in state else state["layer4.0.bn2.running_var"]
    assert not torch.allclose(deep, torch.ones_like(deep))
    # and the frozen statistics normalise what the layer now sees: conv1's output has unit variance.
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        backbone.eval()
        out = backbone.bn1(backbone.conv1((images - 0.5) / 0.5))
    assert 0.2 < float(out.var(dim=(0, 2, 3)).mean()) < 5.0


def test_random_init_bn_estimate_can_be_switched_off(world):
    cfg = load_config(FinetuneConfig, "finetune/segmentation", [
        "mode=frozen", "init=random", "arch=resnet_demo", f"data.root={world / 'segmentation'}",
        "train.random_bn_batches=0"])
    task = get_task("segmentation")
    backbone, meta = initial_backbone(cfg, task.dilation(cfg))
    prepare(task, cfg, backbone, meta)
    assert torch.equal(backbone.state_dict()["bn1.running_var"], torch.ones(backbone.bn1.num_features))
