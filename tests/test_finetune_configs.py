"""Every built-in fine-tuning config loads, validates, and names a registered architecture."""

from __future__ import annotations

import pytest

from datascale.config import builtin_config_dir, load_config
from scaling.models import BACKBONES
from scaling.tasks import TASKS
from scaling.tasks.config import TASK_NAMES, FinetuneConfig

CONFIGS = sorted(p.stem for p in (builtin_config_dir() / "finetune").glob("*.yaml"))


def test_every_task_has_a_demo_config_and_a_registered_implementation():
    assert set(TASK_NAMES) == set(TASKS)
    assert set(TASK_NAMES) <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_builtin_config_is_valid(name):
    cfg = load_config(FinetuneConfig, f"finetune/{name}", ["init=random"])
    assert cfg.task == name.split("_")[0]
    assert cfg.arch in BACKBONES
    demo = "_" not in name
    assert (cfg.arch == "resnet_demo") == demo
