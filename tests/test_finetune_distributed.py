"""Data-parallel fine-tuning on 2 CPU ranks (gloo), through the real `datascale finetune --nproc 2`.

The data: finetune_data's VOC photo variants, three copies each (12 training
images), with every pixel labelled (no void), so each rank's per-pixel loss
mean has as many pixels as the other's and the mean of the two ranks' means
is the global batch's mean. With flips off and batch norms frozen, two ranks
then compute what one rank computes on the same global batch, up to the order
of floating-point sums: the first step's gradient agrees to 1e-5 and the run's
metrics to 1e-3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datascale.cli import main
from datascale.config import load_config
from datascale.errors import ConfigError
from scaling.finetune.distributed import World, rank_loader
from scaling.finetune.loop import initial_backbone, prepare, run_finetune
from scaling.models.backbones import FixedStatsBatchNorm2d, build_backbone, freeze_stages, sync_batchnorms
from scaling.tasks import get_task
from scaling.tasks.config import FinetuneConfig, scaled_lr

import finetune_data
from finetune_data import cpu_threads  # noqa: F401  (autouse fixture)

# Same global batch on one rank and on two: no flips, frozen batch-norm statistics.
SAME_MATH = ["train.batch_size=4", "train.augment=none", "train.hflip=false", "train.bn_stats=frozen",
             "data.image_size=64", "train.log_every=1", "train.threads=1", "dist.log_samples=true"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """12 training images (3 copies of 4 photo variants), every pixel labelled."""
    root = finetune_data.write_voc(tmp_path_factory.mktemp("ddp") / "segmentation")
    for png in (root / "SegmentationClass").glob("*.png"):
        mask = Image.open(png)
        labels = np.asarray(mask).copy()
        labels[labels == 255] = 0
        fixed = Image.fromarray(labels, mode="P")
        fixed.putpalette(mask.getpalette())
        fixed.save(png)
    names = finetune_data.SPLITS["train"]
    for copy in (1, 2):
        for name in names:
            for folder, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
                shutil.copy(root / folder / f"{name}.{ext}", root / folder / f"{name}{copy}.{ext}")
    train = [f"{name}{copy}" for copy in ("", 1, 2) for name in names]
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(train) + "\n")
    return root


def _sets(voc, *extra) -> list[str]:
    return [f"data.root={voc}", "init=random", "arch=resnet_demo", *SAME_MATH, *extra]


def _args(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _cli_two_ranks(voc, out: Path, *extra):
    """`datascale finetune --nproc 2` in a fresh process (the DeepSpeed launcher starts the ranks)."""
    argv = [sys.executable, "-m", "datascale.cli", "finetune", "--task", "segmentation", "--nproc", "2",
            *_args(_sets(voc, *extra)), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _one_rank(voc, out: Path, *extra) -> dict:
    cfg = load_config(FinetuneConfig, "finetune/segmentation", _sets(voc, *extra))
    return run_finetune(cfg, out)


def _samples(run: Path, rank: int) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {}
    for line in (run / "data" / f"samples-rank{rank}.txt").read_text().splitlines():
        step, index = line.split("\t")
        steps.setdefault(int(step), []).append(int(index))
    return steps


@pytest.mark.slow
def test_two_ranks_train_disjoint_shares_of_one_ranks_batches_and_match_its_metrics(voc, tmp_path):
    steps = ["train.steps=6"]
    two, one = tmp_path / "two", tmp_path / "one"
    proc = _cli_two_ranks(voc, two, *steps)
    one_result = _one_rank(voc, one, *steps)
    # Each step: 2 samples per rank, disjoint, together the global batch one rank trained on.
    reference = _samples(one, 0)
    ranks = [_samples(two, r) for r in (0, 1)]
    assert sorted(reference) == sorted(ranks[0]) == sorted(ranks[1]) == list(range(1, 7))
    for step, batch in reference.items():
        assert len(batch) == 4 and len(ranks[0][step]) == len(ranks[1][step]) == 2
        assert not set(ranks[0][step]) & set(ranks[1][step])
        assert ranks[0][step] + ranks[1][step] == batch
    # Rank 0 alone wrote the run folder (one metrics line per step + the evaluation) and printed.
    lines = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6, 6]
    assert json.loads((two / "complete.json").read_text())["world_size"] == 2
    assert (two / "model.pt").is_file() and proc.stdout.count("segmentation finetune [original]") == 1
    # Tolerance: the same arithmetic in another order of sums (measured: ~1e-6 in the losses).
    one_lines = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(lines[:-1], one_lines[:-1]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
    two_result = json.loads((two / "metrics.json").read_text())
    for key, value in one_result["metrics"]["original"].items():
        assert two_result["metrics"]["original"][key] == pytest.approx(value, abs=1e-3), key


@pytest.mark.slow
def test_first_step_gradient_on_two_ranks_equals_one_ranks(voc, tmp_path):
    """One SGD step from the same start (no momentum history, no decay, no clipping) moves every
    weight by lr x gradient; a large lr makes that move dominate the weight's own rounding."""
    step = ["train.steps=1", "train.lr=100", "train.warmup_steps=0", "train.weight_decay=0",
            "train.clip_grad_norm=0", "dist.log_samples=false"]
    cfg = load_config(FinetuneConfig, "finetune/segmentation", _sets(voc, *step))
    task = get_task("segmentation")
    backbone, meta = initial_backbone(cfg, task.dilation(cfg))
    model, _, _ = prepare(task, cfg, backbone, meta)
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    _one_rank(voc, tmp_path / "one", *step)
    _cli_two_ranks(voc, tmp_path / "two", *step)
    moved = [torch.load(tmp_path / run / "model.pt", map_location="cpu", weights_only=True) for run in ("one", "two")]
    one = torch.cat([(start[k] - moved[0][k]).flatten() for k in start]) / 100
    two = torch.cat([(start[k] - moved[1][k]).flatten() for k in start]) / 100
    assert one.norm() > 0
    assert ((one - two).norm() / one.norm()).item() < 1e-5


def test_a_global_batch_that_does_not_divide_over_the_ranks_is_refused(voc, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["finetune", "--task", "segmentation", "--nproc", "2", *_args(_sets(voc, "train.batch_size=5")),
                 "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.batch_size=5 (the global batch) does not divide over 2 ranks" in err
    assert "multiple of 2" in err and not out.exists()


def test_sync_batchnorm_on_cpu_ranks_is_refused(voc, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs: SyncBatchNorm runs")
    code = main(["finetune", "--task", "segmentation", "--nproc", "2",
                 *_args(_sets(voc, "train.bn_stats=update", "dist.batchnorm=sync")), "--out", str(tmp_path / "r")])
    assert code == 2 and "dist.batchnorm=sync needs GPUs" in capsys.readouterr().err


def test_rank_shares_are_disjoint_and_one_rank_gets_the_plain_shuffled_batches():
    dataset = list(range(13))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(3), collate_fn=list)
    plain = [batch for _ in range(3) for batch in loader]
    loaders = [rank_loader(dataset, list, 4, 3, 0, world) for world in (World(), World(0, 2), World(1, 2))]
    one, *shares = [[b for _ in range(3) for b in loader] for loader in loaders]
    assert one == plain  # one process trains exactly as before
    assert [a + b for a, b in zip(*shares)] == plain


def test_sync_batchnorm_keeps_frozen_stages_fixed():
    backbone = build_backbone("resnet_demo")
    freeze_stages(backbone)
    fixed = sum(isinstance(m, FixedStatsBatchNorm2d) for m in backbone.modules())
    trained = sum(isinstance(m, torch.nn.BatchNorm2d) and not isinstance(m, FixedStatsBatchNorm2d)
                  for m in backbone.modules())
    assert sync_batchnorms(backbone) == trained > 0
    assert sum(isinstance(m, FixedStatsBatchNorm2d) for m in backbone.modules()) == fixed
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in backbone.modules()) == trained


def test_linear_lr_scaling_follows_the_global_batch(voc):
    cfg = load_config(FinetuneConfig, "finetune/segmentation",
                      _sets(voc, "train.lr=0.02", "train.batch_size=32", "dist.lr_scaling=linear",
                            "dist.reference_batch=8"))
    assert scaled_lr(cfg) == pytest.approx(0.08)
    assert scaled_lr(load_config(FinetuneConfig, "finetune/segmentation", _sets(voc))) == 0.02
    with pytest.raises(ConfigError, match="reference_batch"):
        load_config(FinetuneConfig, "finetune/segmentation", _sets(voc, "dist.reference_batch=0"))
