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


def test_pretraining_costs_in_proportion_to_its_steps_from_the_budget_axis():
    from datascale.config import load_config
    from scaling.study.config import StudyConfig
    from scaling.study.plan import build_plan

    def pretrain_seconds(*sets: str) -> list[float]:
        plan = build_plan(load_config(StudyConfig, "studies/demo", list(sets)))
        return [estimate_seconds(s) for s in plan.steps if s.stage == "pretrain"]

    plain = pretrain_seconds()
    longer = pretrain_seconds("axes.budget=[steps:5]")
    assert len(plain) == len(longer) == 4
    assert all(abs(b / a - 5) < 1e-9 for a, b in zip(plain, longer))
    # From the pretraining config's own schedule too (pretrain.set), not only the axis.
    assert pretrain_seconds("pretrain.set=[schedule.steps=1600]")[0] == 2 * plain[0]
