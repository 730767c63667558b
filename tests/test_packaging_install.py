"""A plain (non-editable) `pip install .` ships every package and the built-in configs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_every_code_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(ROOT), include=["datascale*", "scaling*", "data_tools*", "analysis*"]))
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_constraints_pin_the_tested_torch():
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


@pytest.mark.slow
def test_plain_install_has_configs_and_cli(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, cwd=tmp_path)
    shipped = {p.relative_to(target / "datascale" / "configs").as_posix()
               for p in (target / "datascale" / "configs").rglob("*.yaml")}
    source = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert source and shipped == source
    # Run from a folder without the checkout on sys.path: only the installed copy is seen.
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import datascale.config as c, datascale.cli as s; "
            "print(c.builtin_config_dir()); s.build_parser()")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip().startswith(str(target))
