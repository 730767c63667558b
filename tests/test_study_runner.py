"""`datascale study --jobs N`: runs of a stage N at a time, each after what it needs, with its
share of the cores; the first failure stops the others and names the failed run and its output."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from datascale import cli
from datascale.errors import DatascaleError
from scaling.study import runner
from scaling.study.plan import Plan

# Each fake run records when it ran and the thread counts it was given, then sleeps.
CHILD = """
import json, os, sys, time
out, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "pid"), "w").write(str(os.getpid()))
if os.path.exists(os.path.join(out, "complete.json")):
    sys.exit(0)  # complete for this config, as a real stage finds it: nothing to do
start = time.time()
print("working in", out, flush=True)
time.sleep(seconds)
if code:
    print("this run broke: bad label in shard 7", flush=True)
    sys.exit(code)
json.dump({"start": start, "end": time.time(), "threads": os.environ.get("DATASCALE_THREADS"),
           "omp": os.environ.get("OMP_NUM_THREADS")}, open(os.path.join(out, "complete.json"), "w"))
"""


@pytest.fixture
def fake_runs(monkeypatch):
    """Steps whose argv is (seconds, exit code), run as the fake child above."""
    monkeypatch.setattr(runner, "_argv", lambda step: [sys.executable, "-c", CHILD, str(step.out), *step.argv])


def _plan(root: Path, runs: dict[str, tuple[float, int]], needs: dict[str, str] | None = None,
          stage: str = "pretrain") -> Plan:
    plan = Plan(root=root)
    for name, (seconds, code) in runs.items():
        plan.add(stage, f"run {name}", [str(seconds), str(code)], root / name,
                 subprocess=True, needs=[root / (needs or {})[name]] if name in (needs or {}) else [])
    return plan


def _times(root: Path, name: str) -> dict:
    return json.loads((root / name / "complete.json").read_text())


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(s <= t < e for s, e in spans) for t, _ in spans)


def _alive(root: Path, name: str) -> bool:
    pid = int((root / name / "pid").read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has stopped


def test_two_jobs_run_two_at_a_time_each_with_its_share_of_the_cores(tmp_path, fake_runs):
    plan = _plan(tmp_path, {n: (2.0, 0) for n in "abcd"})
    runner.run_plan(plan, progress=False, jobs=2)
    spans = [(_times(tmp_path, n)["start"], _times(tmp_path, n)["end"]) for n in "abcd"]
    assert _most_at_once(spans) == 2           # two overlap, never three: the jobs limit holds
    share = str(runner.threads_per_job(2))
    assert all(_times(tmp_path, n)["threads"] == share == _times(tmp_path, n)["omp"] for n in "abcd")
    assert [s.status for s in plan.steps] == ["done"] * 4
    assert all(s.seconds >= 2.0 for s in plan.steps)
    # The report's time per stage is the stage's wall time, not the sum of its runs' times.
    assert plan.wall["pretrain"] < 0.8 * sum(s.seconds for s in plan.steps)
    assert "working in" in (tmp_path / "logs" / "pretrain" / "a.log").read_text()


def test_a_launchers_rank_variables_do_not_reach_the_runs(tmp_path, fake_runs, monkeypatch):
    for name, value in (("MASTER_PORT", "29500"), ("RANK", "3"), ("WORLD_SIZE", "8")):
        monkeypatch.setenv(name, value)
    env = runner._child_env(2)
    assert not {"MASTER_PORT", "RANK", "WORLD_SIZE"} & set(env)
    assert env["DATASCALE_THREADS"] == str(runner.threads_per_job(2))


def test_runs_pick_their_threads_from_the_study(monkeypatch):
    from scaling.finetune.loop import choose_threads

    monkeypatch.setenv("DATASCALE_THREADS", "3")
    assert choose_threads(0) == 3 and choose_threads(0, ranks_here=2) == 3 and choose_threads(5) == 5
    for bad in ("0", "abc", ""):
        monkeypatch.setenv("DATASCALE_THREADS", bad)
        assert choose_threads(0) == max(1, len(os.sched_getaffinity(0)))


def test_a_run_that_needs_another_starts_after_it(tmp_path, fake_runs):
    # "late" continues from "base" (init_from: study:SIZE); "other" is free to run beside base.
    plan = _plan(tmp_path, {"base": (1.0, 0), "late": (0.2, 0), "other": (0.2, 0)}, needs={"late": "base"})
    runner.run_plan(plan, progress=False, jobs=2)
    assert _times(tmp_path, "late")["start"] >= _times(tmp_path, "base")["end"]
    assert _times(tmp_path, "other")["start"] < _times(tmp_path, "base")["end"]


def test_the_first_failure_stops_the_others_and_names_the_run_and_its_output(tmp_path, fake_runs):
    plan = _plan(tmp_path, {"slow": (60.0, 0), "broken": (1.0, 3), "later": (0.1, 0)})
    with pytest.raises(DatascaleError) as caught:
        runner.run_plan(plan, progress=False, jobs=2)
    message = str(caught.value)
    assert "step 'run broken' failed (exit 3)" in message
    assert "bad label in shard 7" in message and "broken.log" in message
    assert not _alive(tmp_path, "slow")          # stopped, not left running or waited for
    assert not (tmp_path / "slow" / "complete.json").exists()
    assert [s.status for s in plan.steps] == ["stopped", "failed", "pending"]


def test_ctrl_c_stops_every_run_in_flight(tmp_path, fake_runs, monkeypatch):
    plan = _plan(tmp_path, {"a": (60.0, 0), "b": (60.0, 0)})
    real_sleep = time.sleep

    def interrupted(seconds):
        while not all((tmp_path / n / "pid").is_file() for n in "ab"):
            real_sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_plan(plan, progress=False, jobs=2)
    assert not _alive(tmp_path, "a") and not _alive(tmp_path, "b")
    assert [s.status for s in plan.steps] == ["stopped", "stopped"]


def test_a_finished_run_is_reported_skipped_and_other_stages_run_one_at_a_time(tmp_path, fake_runs):
    plan = _plan(tmp_path, {"a": (0.5, 0), "b": (0.5, 0)}, stage="dedup")  # dedup steps read each other
    runner.run_plan(plan, progress=False, jobs=2)
    assert _times(tmp_path, "b")["start"] >= _times(tmp_path, "a")["end"]
    again = _plan(tmp_path, {"a": (0.5, 0), "c": (0.5, 0)})
    runner.run_plan(again, progress=False, jobs=2)
    assert [s.status for s in again.steps] == ["skipped", "done"]


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "must be >= 1"),
    (["--set", "jobs=0"], "must be >= 1"),
    (["--jobs", "2", "--set", "pretrain.nproc=2"], "set jobs: 1"),
])
def test_bad_jobs_settings_name_the_key(capsys, args, message):
    assert cli.main(["study", "studies/tiny", *args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "jobs" in err and message in err


def test_the_plan_estimate_counts_the_runs_at_once(tmp_path, capsys):
    assert cli.main(["study", "studies/tiny", "--set", f"out={tmp_path / 's'}", "--dry-run"]) == 0
    alone = capsys.readouterr().out
    assert cli.main(["study", "studies/tiny", "--set", f"out={tmp_path / 's'}", "--jobs", "2", "--dry-run"]) == 0
    together = capsys.readouterr().out
    assert "2 runs at a time" in together and "runs at a time" not in alone
