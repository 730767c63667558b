"""The paper's study on real data (studies/jft300m) resolves to real-scale settings, command by command.

`datascale study studies/jft300m --dry-run` prints every command; each one's
resolved config is read back with `--print-config` (nothing runs, no data is
needed) and checked against the paper's settings. The refusals that keep a
real study from silently running at demo scale are checked too.
"""

from __future__ import annotations

import shlex

import pytest
import yaml

from datascale import cli
from datascale.config import load_config
from datascale.errors import ConfigError
from datascale.launch import strip_launch_args
from scaling.pretrain.config import PretrainConfig
from scaling.tasks.config import FinetuneConfig


def _commands(capsys) -> list[list[str]]:
    assert cli.main(["study", "studies/jft300m", "--dry-run"]) == 0
    lines = [line.split("  #")[0] for line in capsys.readouterr().out.splitlines()]
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("datascale ")]
    # `launch --hostfile H [--num-nodes 1] --nproc N STAGE ...` runs STAGE on the cluster: check STAGE's config.
    return [strip_launch_args(argv[1:]) if argv[0] == "launch" else argv for argv in commands]


def _resolved(argv: list[str], capsys) -> dict:
    assert cli.main([*argv, "--print-config"]) == 0, argv
    return yaml.safe_load(capsys.readouterr().out)


def test_every_printed_command_resolves_to_the_papers_settings(capsys):
    commands = _commands(capsys)
    seen = {}
    for argv in commands:
        stage = " ".join(argv[:2]) if argv[0] in ("dedup", "subsets", "results") else argv[0]
        if stage == "results collect":
            continue  # no config: it reads run folders
        cfg = _resolved(argv, capsys)
        seen.setdefault(stage, 0)
        seen[stage] += 1
        if stage == "pretrain":
            assert cfg["model"]["arch"] == "resnet101"
            loader = cfg["data"]["loader"]
            assert loader["transform"] == "paper" and loader["hierarchy_closure"] is True
            assert cfg["schedule"]["steps"] == 1_500_000 and cfg["optim"]["lr_decay_every"] == 900_000
            assert cfg["optim"]["name"] == "rmsprop" and cfg["deepspeed"]["micro_batch"] == 32
        elif stage == "finetune":
            assert cfg["arch"] in ("resnet101", None)  # None: the backbone.json names it
            if cfg["task"] == "detection":
                assert cfg["data"]["image_size"] >= 800
                assert cfg["detection"]["anchor_sizes"] == [64, 128, 256, 512]
            elif cfg["task"] == "segmentation":
                assert cfg["segmentation"]["atrous_rates"] == [6, 12, 18, 24]
                assert cfg["segmentation"]["output_stride"] == 8 and cfg["data"]["image_size"] == 513
            else:
                assert cfg["pose"]["input_size"] >= 256
            assert cfg["data"]["cleaned_test"], "every downstream run is also scored on the cleaned test set"
        elif stage in ("dedup index", "dedup audit"):
            assert cfg["embedder"]["name"] == "backbone"
            assert cfg["embedder"]["backbone"]["checkpoint"].endswith("runs/pretrain/300M/backbone.pt")
    assert seen == {"subsets make": 1, "pretrain": 4, "dedup index": 2, "dedup audit": 1,
                    "finetune": 90, "fit": 1, "plot": 1}


def test_demo_sized_input_on_a_big_backbone_is_refused_naming_the_setting():
    sets = ["data.train=t", "data.eval=e"]
    with pytest.raises(ConfigError, match=r"data\.loader\.image_size.*resnet101.*transform=paper"):
        load_config(PretrainConfig, "pretrain/jft300m_resnet101", [*sets, "data.loader.transform=demo"])
    with pytest.raises(ConfigError, match=r"data\.image_size.*resnet50.*finetune/detection_paper"):
        load_config(FinetuneConfig, "finetune/detection", ["init=random", "arch=resnet50"])
    with pytest.raises(ConfigError, match=r"pose\.input_size.*resnet152.*finetune/pose_paper"):
        load_config(FinetuneConfig, "finetune/pose", ["init=random", "arch=resnet152"])
    load_config(FinetuneConfig, "finetune/detection_paper", ["init=random"])  # the paper's size is fine


def test_loader_batch_is_the_deepspeed_micro_batch_never_silently_replaced():
    sets = ["data.train=t", "data.eval=e"]
    with pytest.raises(ConfigError, match=r"data\.loader\.batch_size.*deepspeed\.micro_batch=64"):
        load_config(PretrainConfig, "pretrain/demo", [*sets, "data.loader.batch_size=32"])
    assert load_config(PretrainConfig, "pretrain/demo", [*sets, "data.loader.batch_size=64"])


def test_a_global_batch_that_does_not_divide_over_the_ranks_fails_before_launching(tmp_path, capsys):
    code = cli.main(["pretrain", "--set", f"data.train={tmp_path}", "--set", f"data.eval={tmp_path}",
                     "--set", "schedule.global_batch=96", "--set", "deepspeed.micro_batch=64",
                     "--nproc", "2", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "schedule.global_batch=96 does not divide over 2 rank(s)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
