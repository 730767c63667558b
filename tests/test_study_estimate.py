"""The plan's time estimate follows each fine-tuning run's steps, not a flat figure per run."""

from __future__ import annotations

from pathlib import Path

from scaling.study.plan import Step, estimate_seconds


def _finetune(task: str, mode: str, *sets: str) -> Step:
    argv = ["finetune", "--task", task, "--mode", mode, "--config", f"finetune/{task}"]
    for value in sets:
        argv += ["--set", value]
    return Step("finetune", task, argv, Path("out"))


def test_a_run_costs_in_proportion_to_its_steps_and_the_last_override_wins():
    short = estimate_seconds(_finetune("detection", "finetune", "train.steps=250"))
    long = estimate_seconds(_finetune("detection", "finetune", "train.steps=100", "train.steps=1000"))
    assert 3.5 < long / short < 4.1
    assert estimate_seconds(_finetune("detection", "frozen", "train.steps=1000")) < long  # less trains
    assert estimate_seconds(_finetune("pose", "frozen")) < estimate_seconds(_finetune("detection", "frozen"))
    assert estimate_seconds(Step("pretrain", "p", ["pretrain"], Path("out"))) > 0
