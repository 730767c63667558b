"""Running a study's plan: one command at a time, or several at once (``datascale study --jobs N``).

One command at a time, each stage runs in this process (the DeepSpeed stages
in a child process), with every core. With ``--jobs N`` the independent runs
of a stage (the pretraining runs, the fine-tuning runs, the self-training
students) run N at a time, each in its own child process with its share of
the cores (``DATASCALE_THREADS`` and ``OMP_NUM_THREADS`` = cores // N) and its
output in ``STUDY/logs/``. On 2 cores, two one-thread runs at once did 1.5x
the work of one two-thread run (docs/benchmarks.md). A run that needs another
run of its stage (``init_from: study:SIZE``) starts after it. The first
failure stops the study: the runs still going are stopped (status
``stopped``), finished runs are kept, and a rerun resumes.

The thread count changes the order of floating-point reductions, so a study
run with another ``--jobs`` computes other numbers (in the tiny study, in the
fifth decimal; a long pretraining run drifts as another seed would); each
pretraining and fine-tuning run records its thread count in its ``complete.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from datascale import procs
from datascale.errors import DatascaleError

log = logging.getLogger(__name__)

# Stages whose runs never read each other's outputs, except through Step.needs.
PARALLEL_STAGES = ("pretrain", "finetune", "selftrain")
# Measured throughput of N jobs on N cores against one job with every core: 2 jobs 1.49x
# (pretraining) and 1.58x (detection) on 2 cores, 2026-12-07 (docs/benchmarks.md).
JOB_EFFICIENCY = 0.75


def cores() -> int:
    return len(os.sched_getaffinity(0))


def threads_per_job(jobs: int) -> int:
    return max(1, cores() // jobs)


def speedup(jobs: int) -> float:
    """The plan's estimate of how much faster a parallel stage runs with ``jobs`` at once."""
    return 1.0 if jobs <= 1 else max(1.0, JOB_EFFICIENCY * min(jobs, cores()))


def completed_at(step) -> float | None:
    marker = step.out / step.marker
    return marker.stat().st_mtime_ns if marker.is_file() else None


def _argv(step) -> list[str]:
    return [sys.executable, "-m", "datascale.cli", "-q", *step.argv]


def _run_step(step) -> int:
    """Run one command: DeepSpeed stages in their own process, the rest in this one."""
    from datascale import cli

    if step.subprocess:  # dies with the study (datascale.procs): no orphan keeps writing
        return procs.run(_argv(step))
    try:
        return cli.main(["-q", *step.argv])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # a bug in a stage: show it, then stop the study cleanly
        log.exception("step '%s' crashed", step.label)
        return 1


def _failed(step, code: int, log_file: Path | None = None) -> DatascaleError:
    step.status = "failed"
    tail = ""
    if log_file is not None and log_file.is_file():
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        tail = f"\nits output is in {log_file}; the last lines:\n" + "\n".join("  " + x for x in lines)
    return DatascaleError(f"step '{step.label}' failed (exit {code}); fix the cause and run the study again: "
                          f"finished steps are skipped. The command was:\n  {step.command()}{tail}")


def _finish(step, before: float | None, started: float) -> None:
    step.seconds = time.monotonic() - started
    # A stage that found its output complete leaves its completion marker untouched.
    after = completed_at(step)
    step.status = "skipped" if before is not None and before == after else "done"


def run_plan(plan, progress: bool = True, jobs: int = 1) -> None:
    """Run every step, stage by stage, stopping at the first failure (re-running resumes)."""
    from tqdm import tqdm

    plan.jobs = jobs
    stages = list(dict.fromkeys(step.stage for step in plan.steps))
    for stage in stages:
        steps = [s for s in plan.steps if s.stage == stage]
        bar = tqdm(total=len(steps), desc=f"{stage:9s}", unit="run", disable=not progress, leave=True)
        stage_started = time.monotonic()
        try:
            if jobs > 1 and stage in PARALLEL_STAGES and len(steps) > 1:
                _run_at_once(steps, jobs, plan.root, bar)
                continue
            for step in steps:
                bar.set_postfix_str(step.label)
                before, started = completed_at(step), time.monotonic()
                code = _run_step(step)
                if code != 0:
                    step.seconds = time.monotonic() - started
                    raise _failed(step, code)
                _finish(step, before, started)
                bar.update()
        finally:
            bar.close()
            plan.wall[stage] = time.monotonic() - stage_started


# A child starts as a process of its own: a launcher's rank variables in this environment
# (a study started inside a job allocation) would make every child join one process group.
_NOT_INHERITED = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE",
                  "LOCAL_WORLD_SIZE", "CROSS_RANK", "CROSS_SIZE")


def _log_file(step, root: Path) -> Path:
    """``ROOT/logs/STAGE/<output folder under runs/, dashes for slashes>.log``: unique per run."""
    try:
        name = step.out.relative_to(root / "runs" / step.stage)
    except ValueError:
        name = step.out.relative_to(root) if step.out.is_relative_to(root) else Path(step.out.name)
    return root / "logs" / step.stage / ("-".join(name.parts) + ".log")


def _child_env(jobs: int) -> dict[str, str]:
    threads = str(threads_per_job(jobs))
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    return {**env, procs.THREADS_ENV: threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _run_at_once(steps: list, jobs: int, root: Path, bar) -> None:
    """Run ``steps`` up to ``jobs`` at a time, each after the steps it needs."""
    env, outs = _child_env(jobs), {step.out for step in steps}
    done: set[Path] = set()
    pending = list(steps)
    running: dict = {}  # Popen -> (step, marker before, start time, log file)
    try:
        while pending or running:
            for step in [s for s in pending if all(n in done or n not in outs for n in s.needs)]:
                if len(running) >= jobs:
                    break
                pending.remove(step)
                log_file = _log_file(step, root)
                log_file.parent.mkdir(parents=True, exist_ok=True)
                before, started = completed_at(step), time.monotonic()
                with open(log_file, "w", encoding="utf-8") as handle:  # the child has its own copy
                    running[procs.start(_argv(step), env=env, output=handle)] = (step, before, started, log_file)
            if not running:  # every pending step waits on one that is not in this stage's plan
                raise DatascaleError("steps wait on each other: " + ", ".join(s.label for s in pending))
            time.sleep(0.2)
            failures = []
            for proc in [p for p in running if p.poll() is not None]:  # every run that ended, then failures
                step, before, started, log_file = running.pop(proc)
                if proc.returncode != 0:
                    step.seconds = time.monotonic() - started
                    failures.append(_failed(step, proc.returncode, log_file))
                    continue
                _finish(step, before, started)
                done.add(step.out)
                bar.set_postfix_str(step.label)
                bar.update()
            if failures:
                raise failures[0]
    finally:
        _stop(running)


def _stop(running: dict, grace: float = 30.0) -> None:
    """A failure or Ctrl-C: stop the runs still going (SIGTERM, then SIGKILL after ``grace`` s)."""
    for proc, (step, _, started, _) in running.items():
        proc.terminate()
        step.status, step.seconds = "stopped", time.monotonic() - started
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except BaseException:  # noqa: BLE001 - it would not stop, or a second Ctrl-C: kill it
            proc.kill()
            proc.wait()
