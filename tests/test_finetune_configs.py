"""Every built-in fine-tuning config loads, validates, and names a registered architecture."""

from __future__ import annotations

import pytest

from datascale.config import builtin_config_dir, load_config
from datascale.errors import ConfigError
from scaling.models.registry import BACKBONES
from scaling.tasks import TASKS
from scaling.tasks.config import FinetuneConfig

CONFIGS = sorted(p.stem for p in (builtin_config_dir() / "finetune").glob("*.yaml"))


def test_every_registered_task_has_a_demo_config_and_an_implementation():
    assert set(TASKS) <= set(CONFIGS)
    for name, entry in TASKS.items():
        assert entry.load().name == name


def test_unregistered_task_or_arch_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match="registered tasks: detection, segmentation, pose"):
        load_config(FinetuneConfig, "finetune/detection", ["task=keypoints", "init=random"])
    with pytest.raises(ConfigError, match="unknown backbone architecture 'resnet18'"):
        load_config(FinetuneConfig, "finetune/detection", ["init=random", "arch=resnet18"])


@pytest.mark.parametrize("name", CONFIGS)
def test_builtin_config_is_valid(name):
    cfg = load_config(FinetuneConfig, f"finetune/{name}", ["init=random"])
    assert cfg.task == name.split("_")[0]
    assert cfg.arch in BACKBONES
    demo = "_" not in name
    assert (cfg.arch == "resnet_demo") == demo
