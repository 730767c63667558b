"""EfficientTrain++ pretraining: kill -9 at a stage boundary and inside a stage resumes bit-identically.

The schedule (12 steps, a checkpoint every 4): stage 0 is steps 0-3 at 32 px,
stage 1 steps 4-9 at 36 px, stage 2 steps 10-11 at 48 px. A run killed once
step 4's checkpoint exists resumes exactly at the first step of stage 1 (a
boundary); one killed after step 8's resumes inside stage 1. Both must end
with the weights and losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from datascale import cli
from datascale.config import load_config
from scaling.pretrain.config import PretrainConfig
from test_pretrain_deepspeed import _metrics, _pretrain, _weights, pool  # noqa: F401 (pool: a fixture)

CURRICULUM = ["--set", "schedule.steps=12", "--set", "schedule.checkpoint_every=4",
              "--set", "schedule.eval_every=12", "--set", "curriculum.name=efficienttrain",
              "--set", "curriculum.starts=[0.0, 0.3333333, 0.8333333]", "--set", "curriculum.budget=steps",
              "--set", "curriculum.sizes=[0.67, 0.75, 1.0]", "--set", "model.arch=resnet_demo",
              "--set", "data.loader.num_workers=1"]


def _kill_after(run, proc, tag: str) -> str:
    """SIGKILL ``proc`` as soon as checkpoint ``tag`` is the latest; returns the tag it left."""
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= tag:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return latest.read_text().strip()


@pytest.mark.slow
def test_kill_9_at_a_boundary_and_inside_a_stage_gives_the_same_weights(pool, tmp_path):  # noqa: F811
    reference = tmp_path / "reference"
    _pretrain(pool, reference, *CURRICULUM, subset="300")
    sides = {r["step"]: r["input_size"] for r in _metrics(reference) if "loss" in r}
    assert [sides[s] for s in (1, 4, 5, 10, 11, 12)] == [32, 32, 36, 36, 48, 48]  # step s logs step s-1's batch
    killed = tmp_path / "killed"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    left = _kill_after(killed, _pretrain(pool, killed, *CURRICULUM, subset="300", **quiet), "step_00000004")
    assert left == "step_00000004"      # resumes at step 4: the first step of stage 1
    left = _kill_after(killed, _pretrain(pool, killed, *CURRICULUM, subset="300", **quiet), "step_00000008")
    assert left == "step_00000008"      # resumes at step 8: inside stage 1
    assert not (killed / "complete.json").exists()
    _pretrain(pool, killed, *CURRICULUM, subset="300")
    ref, res = _weights(reference), _weights(killed)
    assert ref.keys() == res.keys()
    for name in ref:
        assert torch.equal(ref[name], res[name]), name
    assert ([(r["step"], r["loss"]) for r in _metrics(reference) if "loss" in r]
            == [(r["step"], r["loss"]) for r in _metrics(killed) if "loss" in r])
    lineage = json.loads((killed / "backbone.json").read_text())["lineage"]
    assert lineage["curriculum"] == "efficienttrain"


def test_a_first_stage_below_the_architecture_minimum_is_refused(pool, tmp_path, capsys):  # noqa: F811
    code = cli.main(["pretrain", "--set", f"data.train={pool / 'subsets' / '100'}",
                     "--set", f"data.eval={pool / 'eval'}", "--set", "curriculum.name=efficienttrain",
                     "--set", "data.loader.image_size=48", "--set", "curriculum.sizes=[0.5, 0.6, 1.0]",
                     "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code in (1, 2) and "curriculum.sizes" in err and "24 px" in err, err


def test_the_demo_config_names_the_curriculum_off_by_default():
    cfg = load_config(PretrainConfig, "pretrain/demo", ["data.train=t", "data.eval=e"])
    assert cfg.curriculum.name == "none" and cfg.curriculum.sizes[-1] == 1.0
    on = load_config(PretrainConfig, "pretrain/demo", ["data.train=t", "data.eval=e", "curriculum.name=efficienttrain"])
    assert on.curriculum.bands(on.data.loader.crop_size)[0] >= 32
