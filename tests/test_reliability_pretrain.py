"""Robustness of a pretraining run folder: safe checkpoint loading, resume walking back,
the eval set checked before training, failed.json, a full disk (docs/reliability.md).

Real `datascale pretrain` processes on the tiny world, as tests/test_pretrain_deepspeed.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from datascale import cli
from datascale.errors import DataError
from scaling.pretrain import checkpoint as ckpt

DATASCALE = str(Path(sys.executable).parent / "datascale")
FAST = ["--set", "deepspeed.micro_batch=8", "--set", "schedule.global_batch=16",
        "--set", "schedule.log_every=1", "--set", "schedule.eval_every=4",
        "--set", "schedule.checkpoint_every=2", "--set", "data.loader.num_workers=0",
        "--set", "data.loader.image_size=48", "--set", "data.loader.shuffle_buffer=50",
        "--set", "schedule.keep_checkpoints=3", "--no-progress"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliable")
    for argv in (["-q", "synth", "--config", "world/tiny", "--out", str(root / "world")],
                 ["-q", "shards", "write", str(root / "world"), "--out", str(root / "shards"),
                  "--set", "samples_per_shard=100"],
                 ["-q", "shards", "write", str(root / "world"), "--set", "split=eval",
                  "--out", str(root / "eval")],
                 ["-q", "subsets", "make", str(root / "shards"), "--sizes", "100", "--out",
                  str(root / "subsets")]):
        assert cli.main(argv) == 0, argv
    return root


def _argv(pool, out, *extra, evalset=None):
    return ["pretrain", "--set", f"data.train={pool / 'subsets' / '100'}",
            "--set", f"data.eval={evalset or pool / 'eval'}", "--out", str(out), *FAST, *extra]


def _run(pool, out, *extra, **kw):
    return subprocess.run([DATASCALE, *_argv(pool, out, *extra, **kw)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def finished(pool, tmp_path_factory):
    """A 6-step run with checkpoints at steps 2, 4 and 6 (copied by each test)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = _run(pool, run, "--set", "schedule.steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _unfinished_copy(finished, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "complete.json").unlink()
    return run


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_a_tampered_checkpoint_is_never_unpickled_and_resume_walks_back(pool, finished, tmp_path):
    run = _unfinished_copy(finished, tmp_path)
    marker = tmp_path / "PAYLOAD_RAN"
    newest = run / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt"
    state = torch.load(newest, weights_only=True)
    state["module"]["payload"] = _Payload(marker)
    torch.save(state, newest)  # a valid checkpoint file whose unpickling runs code
    proc = _run(pool, run, "--set", "schedule.steps=6")
    assert not marker.exists(), "the checkpoint's payload ran"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping checkpoint" in proc.stderr and "step_00000006" in proc.stderr
    assert "resumed from step_00000004" in proc.stderr
    assert (run / "checkpoints" / "skipped" / "step_00000006").is_dir()
    done = json.loads((run / "complete.json").read_text())
    assert "step_00000006" in done["skipped_checkpoints"]
    # The export (zero_to_fp32 path not taken in fp32, but the loader is the same) is clean too.
    assert (run / "backbone.pt").is_file()


def test_the_safe_loader_refuses_what_deepspeed_would_unpickle(tmp_path):
    """DeepSpeed's own loader (weights_only=False) inside safe_loading() runs no payload."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    marker = tmp_path / "ran"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    with ckpt.safe_loading(), pytest.raises(Exception, match="Unsupported|weights"):
        TorchCheckpointEngine().load(str(tmp_path / "evil.pt"))
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after the block


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty_latest", "truncated_newest", "missing_position"])
def test_resume_walks_back_to_the_newest_checkpoint_that_loads(pool, finished, tmp_path, damage):
    run = _unfinished_copy(finished, tmp_path)
    newest = run / "checkpoints" / "step_00000006"
    if damage == "empty_latest":
        (run / "checkpoints" / "latest").write_text("")
        expected = "step_00000006"  # intact: `latest` is not needed to find it
    elif damage == "truncated_newest":
        states = newest / "mp_rank_00_model_states.pt"
        states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])
        expected = "step_00000004"
    else:
        (newest / "position-rank0.json").unlink()
        expected = "step_00000004"
    proc = _run(pool, run, "--set", "schedule.steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "another number of ranks" not in proc.stderr
    assert f"resumed from {expected}" in proc.stderr
    if expected != "step_00000006":
        assert "skipping checkpoint" in proc.stderr and "step_00000006" in proc.stderr


def test_no_loadable_checkpoint_is_a_clear_error(tmp_path):
    tag = tmp_path / "checkpoints" / "step_00000002"
    tag.mkdir(parents=True)
    (tag / "position-rank0.json").write_text(json.dumps({"step": 2, "epoch": 0, "samples_seen": 32}))
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="no checkpoint .* can be resumed from: step_00000002: .*damaged"):
        ckpt.resume(engine=None, checkpoint_dir=tmp_path / "checkpoints", rank=0)


def test_a_checkpoint_of_another_number_of_ranks_is_named(tmp_path):
    tag = tmp_path / "step_00000002"
    tag.mkdir()
    for rank in (0, 1):
        (tag / f"position-rank{rank}.json").write_text(json.dumps({"step": 2, "world_size": 2}))
    with pytest.raises(DataError, match="written by 2 ranks.*--nproc 2"):
        ckpt.check_checkpoint(tag, rank=0, world_size=1)


def test_a_broken_eval_set_is_found_before_training(pool, tmp_path, capsys):
    import shutil
    broken = tmp_path / "eval"
    shutil.copytree(pool / "eval", broken)
    (broken / "shard-000000.tar").unlink()
    code = cli.main(_argv(pool, tmp_path / "run", evalset=broken))
    err = capsys.readouterr().err
    assert code == 1 and "eval set" in err and "shard-000000.tar" in err
    assert not (tmp_path / "run").exists()  # refused before any output


def _in_process_with(patch: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `datascale ARGV` in a fresh interpreter after executing ``patch`` (a monkeypatch)."""
    code = textwrap.dedent(patch) + f"\nfrom datascale import cli\nsys.exit(cli.main({argv!r}))\n"
    return subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True)


@pytest.mark.slow
def test_a_full_disk_during_pretraining_is_named_and_leaves_failed_json(pool, tmp_path):
    run = tmp_path / "run"
    patch = """
        import torch, datascale.errors
        def full(*a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: "
                               "basic_ios::clear: iostream error")
        torch.save = full
        datascale.errors._free_bytes = lambda folder: 1024
    """
    proc = _in_process_with(patch, _argv(pool, run, "--set", "schedule.steps=4"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "no space left on the device of" in proc.stderr and str(run) in proc.stderr
    assert "Traceback" not in proc.stderr
    failed = json.loads((run / "failed.json").read_text())
    assert "iostream error" in failed["error"] and failed["step"] == 2
    assert not (run / "complete.json").exists()
    # Safety kept: no checkpoint was published, so a rerun starts cleanly and finishes.
    assert ckpt.latest_tag(run / "checkpoints") is None
    again = _run(pool, run, "--set", "schedule.steps=4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (run / "failed.json").exists() and (run / "complete.json").is_file()
