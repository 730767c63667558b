"""Pretraining under DeepSpeed, end to end through the CLI on the tiny synthetic world.

These start real `datascale pretrain` processes (DeepSpeed needs its own
process group), so they are marked slow; the first one on a fresh machine
also JIT-builds DeepSpeed's small CPU communication op (~90 s, then cached).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datascale import cli

DATASCALE = str(Path(sys.executable).parent / "datascale")

# Small enough for seconds per run on 2 cores, big enough to cross epochs.
FAST = ["--set", "deepspeed.micro_batch=8", "--set", "schedule.global_batch=16",
        "--set", "schedule.log_every=1", "--set", "schedule.eval_every=4",
        "--set", "schedule.checkpoint_every=2", "--set", "data.loader.num_workers=0",
        "--set", "data.loader.image_size=48", "--set", "data.loader.shuffle_buffer=50",
        "--no-progress"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Tiny world -> pretraining and eval shards -> nested subsets."""
    root = tmp_path_factory.mktemp("pretrain")
    steps = [
        ["-q", "synth", "--config", "world/tiny", "--out", str(root / "world")],
        ["-q", "shards", "write", str(root / "world"), "--out", str(root / "shards"),
         "--set", "samples_per_shard=100"],
        ["-q", "shards", "write", str(root / "world"), "--set", "split=eval",
         "--out", str(root / "eval")],
        ["-q", "subsets", "make", str(root / "shards"), "--sizes", "100,300",
         "--out", str(root / "subsets")],
    ]
    for argv in steps:
        assert cli.main(argv) == 0, argv
    return root


def _pretrain(pool, out, *extra, subset="100", check=True, **popen):
    argv = [DATASCALE, "pretrain", "--set", f"data.train={pool / 'subsets' / subset}",
            "--set", f"data.eval={pool / 'eval'}", "--out", str(out), *FAST, *extra]
    if popen:
        return subprocess.Popen(argv, **popen)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run):
    return torch.load(run / "backbone.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_pretrain_writes_a_complete_run(pool, tmp_path):
    run = tmp_path / "run"
    _pretrain(pool, run, "--set", "schedule.steps=8")
    for name in ("config.yaml", "deepspeed.json", "metrics.jsonl", "metrics.json", "backbone.pt",
                 "backbone.json", "complete.json"):
        assert (run / name).is_file(), name
    ds = json.loads((run / "deepspeed.json").read_text())
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["bf16"]["enabled"] is False  # fp32 on CPU
    records = _metrics(run)
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == list(range(1, 9))
    assert all(r["images_per_s"] > 0 and r["lr"] > 0 for r in losses)
    maps = [r["mAP@100"] for r in records if "mAP@100" in r]
    assert len(maps) == 2 and all(0 < m <= 1 for m in maps)
    final = json.loads((run / "metrics.json").read_text())
    assert final["metrics"]["eval"]["mAP@100"] == pytest.approx(maps[-1])
    assert 0 < final["metrics"]["eval"]["mAP@100_all_levels"] <= 1
    # 8 steps x 16 images over a 100-image subset; two evaluations give a slope.
    budget = final["budget"]
    assert budget["passes"] == pytest.approx(1.28) and isinstance(budget["converged"], bool)
    meta = json.loads((run / "backbone.json").read_text())
    assert meta["lineage"]["pretrain_passes"] == budget["passes"]
    assert meta["lineage"]["pretrain_converged"] == budget["converged"]
    assert meta["arch"] == "resnet_demo" and meta["lineage"]["subset_images"] == 100
    assert meta["lineage"]["pretrain_run"] == str(run.resolve())
    from scaling.models.files import load_backbone
    backbone, _ = load_backbone(run / "backbone.pt")
    assert all(not k.startswith("fc.") for k in _weights(run))
    with pytest.raises(Exception, match="resnet50"):
        load_backbone(run / "backbone.pt", arch="resnet50")
    # The same command again is a no-op.
    again = _pretrain(pool, run, "--set", "schedule.steps=8")
    assert "Loading" not in again.stderr and (run / "complete.json").is_file()


@pytest.mark.slow
def test_uint8_hand_over_trains_the_same_weights(pool, tmp_path):
    """data.loader.pixels=uint8 moves the scaling to [-1, 1] from the workers to the training
    process (its device); the run must be the same run, weights and mAP@100 alike."""
    runs = {}
    for pixels in ("float", "uint8"):
        runs[pixels] = tmp_path / pixels
        _pretrain(pool, runs[pixels], "--set", "schedule.steps=6", "--set", "data.loader.num_workers=2",
                  "--set", f"data.loader.pixels={pixels}")
    ref, res = _weights(runs["float"]), _weights(runs["uint8"])
    assert ref.keys() == res.keys() and all(torch.equal(ref[k], res[k]) for k in ref)
    maps = [[r["mAP@100"] for r in _metrics(runs[p]) if "mAP@100" in r] for p in runs]
    assert maps[0] == maps[1] and len(maps[0]) == 2


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_weights(pool, tmp_path):
    steps = ["--set", "schedule.steps=10"]
    reference = tmp_path / "reference"
    _pretrain(pool, reference, *steps, subset="300")
    killed = tmp_path / "killed"
    proc = _pretrain(pool, killed, *steps, subset="300", stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step_00000004":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "complete.json").exists()
    _pretrain(pool, killed, *steps, subset="300")
    ref, res = _weights(reference), _weights(killed)
    assert ref.keys() == res.keys()
    for name in ref:
        assert torch.equal(ref[name], res[name]), name
    ref_losses = [(r["step"], r["loss"]) for r in _metrics(reference) if "loss" in r]
    res_losses = [(r["step"], r["loss"]) for r in _metrics(killed) if "loss" in r]
    assert ref_losses == res_losses


@pytest.mark.slow
def test_two_ranks_zero2_see_disjoint_data_and_match_one_rank(pool, tmp_path):
    two = tmp_path / "two"
    _pretrain(pool, two, "--nproc", "2", "--set", "deepspeed.zero_stage=2",
              "--set", "data.log_keys=true", "--set", "schedule.steps=6", subset="300")
    keys = [{line.split("\t")[1] for line in (two / "data" / f"keys-rank{r}.txt").read_text().splitlines()}
            for r in (0, 1)]
    assert len(keys[0]) == len(keys[1]) == 6 * 8  # 6 steps x 1 micro-batch of 8 per rank
    assert not keys[0] & keys[1]
    one = tmp_path / "one"
    _pretrain(pool, one, "--set", "deepspeed.micro_batch=16", "--set", "schedule.steps=6", subset="300")
    a, b = _weights(two), _weights(one)
    diff = sum((a[k].float() - b[k].float()).norm() ** 2 for k in a) ** 0.5
    scale = sum(a[k].float().norm() ** 2 for k in a) ** 0.5
    assert diff / scale < 0.05, f"2-rank and 1-rank weights differ by {diff / scale:.3f}"
    # Logged losses are means over all ranks' batches: the two runs see the same
    # distribution of data, so their average losses agree closely.
    la = [r["loss"] for r in _metrics(two) if "loss" in r]
    lb = [r["loss"] for r in _metrics(one) if "loss" in r]
    assert len(la) == len(lb) == 6
    assert abs(sum(la) - sum(lb)) / sum(lb) < 0.15, (la, lb)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message(pool, tmp_path):
    run = tmp_path / "nan"
    proc = _pretrain(pool, run, "--set", "optim.lr=1e12", "--set", "optim.warmup_steps=0",
                     "--set", "deepspeed.grad_clip=0", "--set", "schedule.steps=30", check=False)
    assert proc.returncode == 1
    assert "the loss became" in proc.stderr and "Traceback" not in proc.stderr
    failed = json.loads((run / "failed.json").read_text())
    assert failed["step"] >= 1 and not (run / "complete.json").exists()


@pytest.mark.parametrize("override, message", [
    (["--set", "data.train=/nonexistent"], "neither a subset folder"),
    (["--set", "data.eval=/nonexistent"], "eval set not found"),
    (["--set", "schedule.global_batch=20"], "does not divide"),
    (["--set", "model.arch=resnet9000"], "resnet9000"),
    (["--set", "deepspeed.zero_stage=3"], "zero_stage"),
])
def test_bad_input_fails_before_training(pool, tmp_path, capsys, override, message):
    argv = ["pretrain", "--set", f"data.train={pool / 'subsets' / '100'}",
            "--set", f"data.eval={pool / 'eval'}", "--out", str(tmp_path / "bad"), *FAST, *override]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err, err


def test_checkpoint_of_another_architecture_is_refused(pool, tmp_path, capsys):
    from scaling.models.backbones import build_backbone
    from scaling.models.files import save_backbone
    other = tmp_path / "other"
    save_backbone(build_backbone("resnet_demo"), other, {"num_classes": 3})
    meta = json.loads((other / "backbone.json").read_text())
    meta["arch"] = "resnet50"
    (other / "backbone.json").write_text(json.dumps(meta))
    code = cli.main(["pretrain", "--set", f"data.train={pool / 'subsets' / '100'}",
                     "--set", f"data.eval={pool / 'eval'}", "--set", f"model.init_from={other}",
                     "--out", str(tmp_path / "run"), *FAST])
    assert code == 1 and "resnet50" in capsys.readouterr().err


def test_refused_runs_start_no_process_group(pool, tmp_path, capsys):
    """A user mistake is found before torch.distributed starts (and before it claims a port)."""
    import torch.distributed as dist

    test_checkpoint_of_another_architecture_is_refused(pool, tmp_path, capsys)
    assert not dist.is_initialized()
