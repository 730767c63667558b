"""`shards write` on 2 ranks gives the bytes of a 1-rank run; a killed rank resumes; a missing one times out."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

import data_tools.shards.buckets as buckets_mod
from data_tools.shards.distributed import BarrierTimeout, RankFailed
from data_tools.shards.write import ShardsConfig, write_shards
from test_shards_data import make_world

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"samples_per_shard": 10, "bucket_records": 100, "workers": 1}
# Rank 1, killed (SIGKILL, as by the OOM killer) half-way through the tar of its second shard.
_KILLED_RANK = r"""
import os, signal, sys
import data_tools.shards.write as write
real, calls = write.write_tar, []
def dying(path, samples):
    calls.append(path)
    if len(calls) == 2:
        path.write_bytes(b"half a tar")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, samples)
write.write_tar = dying
write.write_shards(sys.argv[1], sys.argv[2], write.ShardsConfig(**{settings}), progress=False,
                   rank=1, world_size=2)
"""


def _cfg() -> ShardsConfig:
    return ShardsConfig(**SETTINGS)


def _cli(world: Path, out: Path, *flags: str, env: dict | None = None) -> subprocess.Popen:
    sets = [a for key, value in SETTINGS.items() for a in ("--set", f"{key}={value}")]
    return subprocess.Popen([sys.executable, "-m", "datascale.cli", "-q", "shards", "write",
                             str(world), "--out", str(out), *sets, *flags],
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def _fingerprint(folder: Path) -> dict:
    """sha256 of every output file that must not depend on the number of ranks."""
    files = sorted(folder.glob("shard-*.tar")) + [folder / n for n in (
        "manifest.parquet", "sizes.json", "classes.json", "card.md")]
    prints = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    lineage = yaml.safe_load((folder / "config.yaml").read_text())
    prints["config.yaml"] = {k: v for k, v in lineage.items() if k != "created"}
    summary = json.loads((folder / "complete.json").read_text())
    prints["complete.json"] = {k: v for k, v in summary.items() if k not in ("finished", "pid")}
    return prints


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("dist") / "world", images=300)


@pytest.fixture(scope="module")
def one_rank(world):
    out = world.parent / "one"
    write_shards(world, out, _cfg(), progress=False)
    assert len(list(out.glob("shard-*.tar"))) >= 30 and not (out / ".work").exists()
    return _fingerprint(out)


def test_two_rank_processes_write_the_bytes_of_one_rank(world, one_rank, tmp_path):
    out = tmp_path / "two"
    # Rank 0 by flags, rank 1 by the launcher's environment variables.
    ranks = [_cli(world, out, "--rank", "0", "--world-size", "2"),
             _cli(world, out, env={"RANK": "1", "WORLD_SIZE": "2"})]
    printed = [_finish(p) for p in ranks]
    assert "300 images in 31 shards" in printed[0]
    assert "rank 1 of 2: its 16 of 31 shards" in printed[1]  # contiguous halves: 15 + 16
    assert _fingerprint(out) == one_rank
    assert not (out / ".work").exists()


def _threads(target, world_size: int) -> list:
    """Run ``target(rank)`` for every rank in its own thread; each rank's result or exception."""
    results: list = [None] * world_size

    def run(rank: int) -> None:
        try:
            results[rank] = target(rank)
        except Exception as exc:  # noqa: BLE001 (the test looks at it)
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_buckets_split_by_the_ranks_summed_counts_as_on_one_machine(world, tmp_path, monkeypatch):
    # 2 top buckets of ~150 records, ~50 per rank: every rank must split them (one machine
    # would), though no rank's own file exceeds bucket_records=100.
    monkeypatch.setattr(buckets_mod, "TOP_BUCKETS", 2)
    write_shards(world, tmp_path / "one", _cfg(), progress=False)
    split, splits = buckets_mod.split_bucket, []
    monkeypatch.setattr(buckets_mod, "split_bucket",
                        lambda bucket, total: splits.append(total) or split(bucket, total))
    results = _threads(lambda rank: write_shards(world, tmp_path / "three", _cfg(), progress=False,
                                                 rank=rank, world_size=3, barrier_timeout=60), 3)
    assert results[0]["images"] == 300, results
    assert len(splits) == 2 * 3 and all(total > 100 for total in splits)
    assert _fingerprint(tmp_path / "three") == _fingerprint(tmp_path / "one")


def test_killed_rank_resumes_to_identical_output(world, one_rank, tmp_path):
    out = tmp_path / "killed"
    rank0 = _cli(world, out, "--rank", "0", "--world-size", "2")
    script = _KILLED_RANK.replace("{settings}", repr(SETTINGS))
    killed = subprocess.run([sys.executable, "-c", script, str(world), str(out)], timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert killed.returncode == -9
    assert rank0.poll() is None, "rank 0 should be waiting for rank 1"
    assert list(out.glob(".shard-*.tmp")), "the killed rank should have left its half shard"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    _finish(_cli(world, out, "--rank", "1", "--world-size", "2"))
    _finish(rank0)
    assert _fingerprint(out) == one_rank
    assert not list(out.glob(".*.tmp"))
    # The rerun wrote only what was missing: every shard finished before the kill is untouched.
    assert all((out / name).stat().st_mtime_ns == when for name, when in before.items())


def test_missing_rank_times_out_naming_it(world, tmp_path):
    with pytest.raises(BarrierTimeout, match=r"rank\(s\) 1 .*--rank N --world-size 2"):
        write_shards(world, tmp_path / "out", _cfg(), progress=False, rank=0, world_size=2,
                     barrier_timeout=0.5)
    # The folder is kept for the ranks that come later, and the same command then finishes.
    assert (tmp_path / "out" / "config.yaml").is_file()
    results = _threads(lambda rank: write_shards(world, tmp_path / "out", _cfg(), progress=False,
                                                 rank=rank, world_size=2, barrier_timeout=60), 2)
    assert results[0]["images"] == 300 and results[1]["rank"] == 1, results


def test_a_failing_rank_stops_the_others_with_its_error(world, tmp_path):
    bad = tmp_path / "world"
    bad.mkdir()
    for name in ("classes.json", "pretrain"):
        os.symlink(world / name, bad / name)
    lines = (world / "pretrain" / "labels.jsonl").read_text().splitlines()
    bad_line = len(lines) - 7  # in the second half of the lines: rank 1 of 2 reads it
    lines[bad_line] = json.dumps({**json.loads(lines[bad_line]), "labels": [99]})
    (bad / "pretrain").unlink()
    (bad / "pretrain").mkdir()
    os.symlink(world / "pretrain" / "images", bad / "pretrain" / "images")
    (bad / "pretrain" / "labels.jsonl").write_text("\n".join(lines) + "\n")
    results = _threads(lambda rank: write_shards(bad, tmp_path / "out", _cfg(), progress=False,
                                                 rank=rank, world_size=2, barrier_timeout=60), 2)
    assert "99" in str(results[1]) and not isinstance(results[1], RankFailed)
    assert isinstance(results[0], RankFailed), results
    assert "rank 1 of 2 failed" in str(results[0]) and "99" in str(results[0])


def test_launch_runs_shards_write_under_the_deepspeed_launcher(capsys):
    from datascale import cli
    code = cli.main(["launch", "--nproc", "2", "--dry-run", "--master-port", "29999",
                     "shards", "write", "WORLD", "--out", "SHARDS"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "--num_gpus 2" in printed and "--module datascale.cli shards write WORLD --out SHARDS" in printed


def test_nproc_2_runs_the_ranks_through_the_launcher(world, one_rank, tmp_path):
    out = tmp_path / "nproc"
    printed = _finish(_cli(world, out, "--nproc", "2"))
    assert "--num_gpus 2" in printed and "300 images in 31 shards" in printed
    assert _fingerprint(out) == one_rank
