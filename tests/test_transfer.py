"""Pretraining must transfer: on a small world, a backbone pretrained on the whole pool
beats random init at equal fine-tuning steps on every task: by 15% on the mean over
seeds, and on every seed.

This is the test that would have caught the bug of issue "Transfer that works"
(pretrained backbones losing to random init, docs/transfer.md). It checks the
paper's frozen-trunk setting, where pretraining is all the trunk knows; fine-tune
mode is measured in docs/transfer.md (random init catches up there on detection
and pose once the heads have trained long enough).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATASCALE = str(Path(sys.executable).parent / "datascale")
SEEDS = (0, 1)
# (task, metric, extra settings): steps chosen so that every task is off its floor.
TASKS = (("detection", "AP50", ["train.steps=500"]),
         ("segmentation", "mIoU", ["train.steps=150"]),
         ("pose", "AP", ["train.steps=200"]))


def _run(*argv: str) -> None:
    proc = subprocess.run([DATASCALE, *argv], capture_output=True, text=True)
    assert proc.returncode == 0, f"datascale {' '.join(argv)} failed:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A world of 2,400 pool images and 150-image downstream sets, and a backbone pretrained on the pool."""
    root = tmp_path_factory.mktemp("transfer")
    world = root / "world"
    _run("synth", "--config", "world/demo", "--out", str(world),
         "--set", "pretrain.images=2400", "--set", "eval.images=300",
         *[f"--set={task}.{split}={n}" for task in ("detection", "segmentation", "pose")
           for split, n in (("train", 150), ("val", 20), ("test", 80))])
    _run("shards", "write", str(world), "--out", str(root / "shards"))
    _run("shards", "write", str(world), "--set", "split=eval", "--out", str(root / "eval"))
    _run("pretrain", "--config", "pretrain/demo", "--no-progress", "--out", str(root / "pretrain"),
         "--set", f"data.train={root / 'shards'}", "--set", f"data.eval={root / 'eval'}",
         "--set", "schedule.steps=500", "--set", "optim.lr_decay_every=350",
         "--set", "schedule.eval_every=500", "--set", "schedule.checkpoint_every=500")
    return root


def _score(root: Path, task: str, metric: str, extra: list[str], init: str, seed: int) -> float:
    out = root / "finetune" / f"{task}-{init}-{seed}"
    source = (["--backbone", str(root / "pretrain" / "backbone.pt")] if init == "pretrained"
              else ["--init", "random", "--arch", "resnet_demo"])
    _run("finetune", "--task", task, "--mode", "frozen", "--data", str(root / "world" / task),
         "--seed", str(seed), *source, *[f"--set={s}" for s in extra], "--out", str(out))
    return json.loads((out / "metrics.json").read_text())["metrics"]["original"][metric]


@pytest.mark.slow
@pytest.mark.parametrize("task,metric,extra", TASKS, ids=[t[0] for t in TASKS])
def test_a_backbone_pretrained_on_the_pool_beats_random_init(pretrained, task, metric, extra):
    gaps = []
    for seed in SEEDS:
        ours = _score(pretrained, task, metric, extra, "pretrained", seed)
        random = _score(pretrained, task, metric, extra, "random", seed)
        gaps.append((ours, random))
    # A margin on the mean over seeds (15%, and 0.005 in absolute terms), and a win on every seed.
    # Not 15% on every seed: frozen pose's true gap is about 1.2x with a seed-to-seed spread of
    # about +-0.01 AP that also moves between CPUs (CI measured seed 1 at 0.073 vs 0.065 where this
    # machine gave 0.073 vs 0.055); four seeds on one machine gave 1.46, 1.24, 1.03 and 1.16x
    # (docs/transfer.md). A random-init stand-in for the pretrained trunk sits at 1.0x and fails.
    ours_mean = sum(ours for ours, _ in gaps) / len(gaps)
    random_mean = sum(random for _, random in gaps) / len(gaps)
    assert ours_mean > random_mean * 1.15 and ours_mean > random_mean + 0.005, \
        f"{task} {metric}: pretrained vs random {gaps}"
    for ours, random in gaps:
        assert ours > random, f"{task} {metric}: random init won a seed: {gaps}"
