"""The `datascale` console script: help for every subcommand, exit codes, no tracebacks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from scaling import cli

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
    code = ("import sys; from scaling import cli; cli.build_parser(); "
            "print(','.join(m for m in ('torch', 'faiss', 'deepspeed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_shortcut_flags_become_set_overrides():
    from scaling.cli import flag_overrides
    args = argparse.Namespace(sizes="240, 720,1.0", embedder="", threshold=0.0, workers=0,
                              checkpoint=None)
    keys = {"sizes": "sizes", "embedder": "audit.embedder", "threshold": "audit.threshold",
            "workers": "audit.workers", "checkpoint": "embedder.backbone.checkpoint"}
    assert flag_overrides(args, keys, lists=("sizes",)) == [
        'sizes=["240", "720", "1.0"]', "audit.threshold=0.0", "audit.workers=0"]
