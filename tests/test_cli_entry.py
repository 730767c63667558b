"""The `datascale` console script: help for every subcommand, exit codes, no tracebacks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from datascale import cli

VENV_BIN = Path(sys.executable).parent


def _subcommand_paths(parser: argparse.ArgumentParser, prefix=()):
    """Every (nested) subcommand path, e.g. ('shards', 'write')."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_every_subcommand_has_help(capsys):
    paths = list(_subcommand_paths(cli.build_parser()))
    assert paths, "no subcommands registered"
    for path in paths:
        with pytest.raises(SystemExit) as info:
            cli.main([*path, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: datascale " + " ".join(path) in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "pipeline:" in capsys.readouterr().out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_is_installed():
    script = VENV_BIN / "datascale"
    assert script.exists(), "run `make test` so that the package is installed in .venv"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("datascale ")


def test_help_is_fast_without_heavy_imports():
    """`datascale --help` must not import torch/faiss (seconds of startup)."""
    code = ("import sys; from datascale import cli; cli.build_parser(); "
            "print(','.join(m for m in ('torch', 'faiss', 'deepspeed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_shortcut_flags_are_set_overrides_in_command_line_order():
    """One policy for every stage: a flag is --set KEY=VALUE, and the later of the two wins."""
    from scaling.tasks.config import FinetuneConfig
    from scaling.finetune.cli import config_from_cli

    parser = cli.build_parser()
    base = ["finetune", "--task", "detection", "--init", "random", "--arch", "resnet_demo", "--out", "r"]
    later_set = parser.parse_args([*base, "--steps", "600", "--set", "train.steps=100"])
    later_flag = parser.parse_args([*base, "--set", "train.steps=100", "--steps", "600"])
    assert isinstance(config_from_cli(later_set), FinetuneConfig)
    assert config_from_cli(later_set).train.steps == 100
    assert config_from_cli(later_flag).train.steps == 600
    # Lists, floats and repeatable flags keep their meaning; unset flags add nothing.
    args = parser.parse_args(["subsets", "make", "s", "--out", "o", "--sizes", "240, 720,1.0"])
    assert args.overrides == ['sizes=["240", "720", "1.0"]']
    args = parser.parse_args(["dedup", "audit", "i", "--testset", "t", "--out", "o", "--threshold", "0.0",
                              "--set", "audit.workers=1", "--workers", "0"])
    assert args.overrides == ["audit.threshold=0.0", "audit.workers=1", "audit.workers=0"]
    args = parser.parse_args(["fit", "--where", "task=detection", "--where", "mode=frozen"])
    assert args.overrides[-1] == 'where=["task=detection", "mode=frozen"]'


def test_print_config_prints_the_resolved_yaml_and_exits_zero(capsys):
    import yaml

    code = cli.main(["finetune", "--task", "pose", "--init", "random", "--arch", "resnet_demo",
                     "--steps", "7", "--out", "never-written", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0 and printed["task"] == "pose" and printed["train"]["steps"] == 7
    assert not Path("never-written").exists()


def test_print_config_works_as_python_m_too():
    """The DeepSpeed launcher starts `python -m datascale.cli`: the module runs as __main__."""
    proc = subprocess.run([sys.executable, "-m", "datascale.cli", "finetune", "--task", "pose", "--init", "random",
                           "--arch", "resnet_demo", "--out", "never-written", "--print-config"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("task: pose"), proc.stderr
