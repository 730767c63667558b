"""`datascale study` on the tiny config: end to end, idempotent, and resumable after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from datascale import cli

DATASCALE = str(Path(sys.executable).parent / "datascale")
TASKS = ("detection", "segmentation", "pose")
INITS = ("0.1", "0.3", "1", "random")


def _study(out: Path, *extra: str, **popen):
    argv = [DATASCALE, "study", "studies/tiny", "--set", f"out={out}", "--no-progress", *extra]
    if popen:
        return subprocess.Popen(argv, **popen)
    return subprocess.run(argv, capture_output=True, text=True)


def _values(out: Path) -> pd.DataFrame:
    """The study's results without the columns that name where they were written."""
    table = pd.read_parquet(out / "results" / "results.parquet")
    keep = [c for c in ("task", "metric", "test_set", "mode", "init", "subset_images", "value")
            if c in table.columns]
    return table[keep].sort_values(keep[:-1]).reset_index(drop=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tiny"
    proc = _study(out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


@pytest.mark.slow
def test_tiny_study_runs_every_stage(finished):
    out, proc = finished
    assert "study tiny: " in proc.stdout and "commands" in proc.stdout      # the plan first
    assert "stage      status" in proc.stdout                                # the summary table
    for task in TASKS:
        for mode in ("frozen", "finetune"):
            for init in INITS:
                assert (out / "runs" / "finetune" / task / mode / f"{init}-seed0" / "complete.json").is_file()
    for name in ("0.1", "0.3", "1"):
        assert (out / "runs" / "pretrain" / name / "backbone.pt").is_file()
    table = pd.read_parquet(out / "results" / "results.parquet")
    assert set(TASKS) <= set(table["task"])
    # Self-training: a student per task, taught by its random-init run, in the results as an init.
    for task in TASKS:
        assert (out / "runs" / "selftrain" / task / "random-seed0" / "student" / "complete.json").is_file()
        assert list((out / "runs" / "selftrain" / task / "random-seed0" / "pseudo").glob("pseudo-*.tar"))
    assert set(table.loc[table["init"] == "selftrain", "task"]) == set(TASKS)
    assert {"original", "cleaned"} <= set(table["test_set"])            # dedup effect reported
    report = (out / "results" / "report.md").read_text()
    assert "## The study" in report and "Near-duplicate audit" in report
    assert (out / "results" / "fits.csv").is_file()
    assert list((out / "results" / "plots").glob("*.png"))


@pytest.mark.slow
def test_rerunning_a_finished_study_is_a_no_op(finished):
    out, _ = finished
    marker = out / "runs" / "pretrain" / "1" / "complete.json"
    before = marker.stat().st_mtime_ns
    proc = _study(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout.split("stage      status", 1)[1].splitlines()
    rows = [line.split() for line in summary
            if line.split()[:1] and line.split()[0] in ("synth", "shards", "subsets", "pretrain", "dedup", "finetune", "selftrain")]
    assert rows and all(row[1] == "skipped" for row in rows), rows
    assert marker.stat().st_mtime_ns == before


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(finished, tmp_path):
    reference, _ = finished
    out = tmp_path / "killed"
    proc = _study(out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    probe = out / "runs" / "finetune" / "detection" / "frozen" / "0.3-seed0" / "complete.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not probe.exists():
        time.sleep(0.1)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the study and any stage process it started
    proc.wait()
    assert not (out / "results" / "results.parquet").exists()
    again = _study(out)
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(_values(out), _values(reference))


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "dry"
    assert cli.main(["study", "studies/tiny", "--set", f"out={out}", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    commands = [line for line in printed.splitlines() if line.startswith("datascale ")]
    assert commands[0].startswith("datascale synth") and commands[-1].startswith("datascale plot")
    assert sum(c.startswith("datascale finetune") for c in commands) == 3 * 2 * 4
    assert not out.exists()


def test_cluster_study_launches_pretraining_embedding_and_finetuning(tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=8\nb slots=8\n")
    assert cli.main(["study", "studies/tiny", "--set", f"out={tmp_path / 'c'}", "--set", "launcher=deepspeed",
                     "--set", f"hostfile={hosts}", "--set", "pretrain.nproc=8", "--set", "finetune.nproc=2",
                     "--dry-run"]) == 0
    printed = capsys.readouterr().out
    launched = [line for line in printed.splitlines() if line.startswith("datascale launch")]
    # every pretraining run + the pool embedding + every fine-tuning run (3 tasks x 2 modes x 4 inits)
    assert len(launched) == 3 + 1 + 3 * 2 * 4
    assert all(f"--hostfile {hosts}" in line for line in launched)
    finetunes = [line for line in launched if " finetune " in line]
    assert len(finetunes) == 3 * 2 * 4
    assert all("--num-nodes 1 --nproc 2 finetune --task" in line for line in finetunes)
    assert not any(line.startswith("datascale finetune") for line in printed.splitlines())


def test_the_paper_study_config_is_valid(capsys):
    assert cli.main(["study", "studies/jft300m", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "pretrain --config pretrain/jft300m_resnet101" in printed
    # On the cluster: `launch --hostfile H --num-nodes 1 --nproc 2 finetune ...`, data-parallel.
    finetunes = [line for line in printed.splitlines()
                 if line.startswith("datascale launch") and " --nproc 2 finetune " in line]
    assert len(finetunes) == 3 * 2 * 5 * 3


@pytest.mark.parametrize("override, message", [
    ("finetune.modes=[frozen,finetuned]", "unknown mode 'finetuned'"),
    ("pretrian.nproc=2", "did you mean 'pretrain'"),
    ("launcher=deepspeed", "needs a hostfile"),
])
def test_bad_study_configs_name_the_key(capsys, override, message):
    assert cli.main(["study", "studies/tiny", "--set", override, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_two_runs_at_a_time_killed_and_resumed_give_the_one_at_a_time_results(finished, tmp_path):
    """--jobs 2: kill -9 the study mid fine-tuning with two runs in flight (they must end with
    it), resume, and compare with the reference run one at a time (one thread per run instead
    of two moves the tiny study's values in the fifth decimal)."""
    reference, _ = finished
    out = tmp_path / "jobs2"
    proc = _study(out, "--jobs", "2", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                  start_new_session=True)
    probe = out / "runs" / "finetune" / "detection" / "frozen" / "0.3-seed0" / "complete.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not probe.exists():
        time.sleep(0.1)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # the study only: its runs in flight must end with it
    proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # any process left of the study's session?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a run kept going after the study was killed")
    again = _study(out, "--jobs", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    ours, theirs = _values(out), _values(reference)
    pd.testing.assert_frame_equal(ours.drop(columns="value"), theirs.drop(columns="value"))
    assert (ours["value"] - theirs["value"]).abs().max() < 1e-3
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for run in (out / "runs" / "finetune" / "pose" / "finetune" / "1-seed0", out / "runs" / "pretrain" / "1"):
        assert json.loads((run / "complete.json").read_text())["threads"] == share, run
    assert (out / "logs" / "finetune" / "pose-finetune-1-seed0.log").is_file()
