"""A study config names its axes; `datascale study` expands the grid into ordinary commands."""

from __future__ import annotations

import shlex

import pytest

from datascale import cli
from datascale.config import load_config
from datascale.errors import ConfigError
from scaling.pretrain.config import PretrainConfig, budget_label, resolve_schedule
from scaling.study.config import StudyConfig
from scaling.study.plan import build_plan


def _plan(*sets):
    return build_plan(load_config(StudyConfig, "studies/demo", list(sets)))


def _pretrain_runs(plan):
    return {s.out.name: s.argv for s in plan.steps if s.stage == "pretrain"}


def test_the_grid_is_every_combination_and_adding_a_value_renames_nothing():
    before = _pretrain_runs(_plan())
    grid = _plan("axes.pretrain_seed=[0, 1]", "axes.classes=[all, 'top:50']", "axes.budget=['steps:1', 'epochs:4']",
                 "axes.arch=[resnet_demo, resnet50]")
    after = _pretrain_runs(grid)
    assert len(after) == 4 * 2 * 2 * 2 * 2
    assert set(before) <= set(after)  # the runs that were there keep their folders
    assert {"240", "240-seed1", "240-top50", "240-epochs4", "240-resnet50", "7200-resnet50-epochs4-top50-seed1"} <= set(after)
    argv = after["7200-resnet50-epochs4-top50-seed1"]
    assert {"model.arch=resnet50", "seed=1", "schedule.epochs=4"} <= set(argv)
    assert any(a.endswith("subsets_top50/7200") for a in argv)
    subsets = [s for s in grid.steps if s.stage == "subsets"]
    assert [s.argv[s.argv.index("--out") + 1].split("/")[-1] for s in subsets] == ["subsets", "subsets_top50"]
    assert "--top-classes" in subsets[1].argv and "50" in subsets[1].argv
    # Fine-tuning covers every backbone, and random init once per architecture.
    finetune = {s.out.name for s in grid.steps if s.stage == "finetune" and "/segmentation/frozen/" in str(s.out)}
    assert {"random-seed0", "random-resnet50-seed0", "7200-resnet50-epochs4-top50-seed1-seed0"} <= finetune


def test_steps_budget_scales_the_schedule_and_init_from_the_study_chains_runs():
    runs = _pretrain_runs(_plan("axes.budget=['steps:1', 'steps:2']", "axes.init_from=['', 'study:7200']"))
    base = load_config(PretrainConfig, "pretrain/demo", ["data.train=t", "data.eval=e"])
    twice = runs["240-steps2"]
    assert f"schedule.steps={2 * base.schedule.steps}" in twice
    assert f"optim.lr_decay_every={2 * base.optim.lr_decay_every}" in twice
    chained = runs["720-from-study-7200"]
    assert any(a.startswith("model.init_from=") and a.endswith("runs/pretrain/7200/backbone.pt") for a in chained)
    names = list(runs)
    assert names.index("7200") < names.index("240-from-study-7200")  # the run it starts from comes first
    # Run several at a time (--jobs), a continuing run waits for the run it starts from.
    plan = _plan("axes.init_from=['', 'study:7200']")
    outs = {s.out.name: s for s in plan.steps if s.stage == "pretrain"}
    assert outs["240-from-study-7200"].needs == [outs["7200"].out]
    assert outs["240"].needs == [] and outs["7200"].needs == []


def test_same_epochs_budget_resolves_per_subset_and_labels_the_run():
    cfg = load_config(PretrainConfig, "pretrain/demo", ["data.train=t", "data.eval=e", "schedule.epochs=4"])
    small, large = resolve_schedule(cfg, 240), resolve_schedule(cfg, 7200)
    batch = cfg.schedule.global_batch
    assert small.schedule.steps == -(-4 * 240 // batch) and large.schedule.steps == -(-4 * 7200 // batch)
    assert large.optim.lr_decay_every > small.optim.lr_decay_every
    assert budget_label(small) == "epochs:4" and budget_label(load_config(
        PretrainConfig, "pretrain/demo", ["data.train=t", "data.eval=e"])) == f"steps:{cfg.schedule.steps}"


@pytest.mark.parametrize("setting, message", [
    ("axes.budget=['weeks:2']", "use steps:M"),
    ("axes.classes=['top:x']", "use all or top:K"),
    ("axes.arch=[resnet9]", "unknown architecture 'resnet9'"),
    ("axes.pretrain_seed=[1, 1]", "lists a value twice"),
    ("axes.curriculum=[none, fasttrain]", "'fasttrain': use one of none, efficienttrain"),
    ("axes.init_from=['study:7200', '']", "cannot itself be study:SIZE"),
])
def test_bad_axis_values_are_config_errors(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(StudyConfig, "studies/demo", [setting])


def test_dry_run_prints_the_expanded_grid(capsys):
    assert cli.main(["study", "--dry-run", "--set", "axes.pretrain_seed=[0,1]"]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith("datascale pretrain")]
    assert len(commands) == 8


def test_the_capacity_and_classes_studies_plan_the_papers_ablations():
    capacity = build_plan(load_config(StudyConfig, "studies/capacity", []))
    runs = _pretrain_runs(capacity)
    assert set(runs) == {f"{size}{arch}" for size in ("240", "720", "2400", "7200")
                         for arch in ("", "-resnet_demo_narrow", "-resnet_demo_wide")}
    assert all("model.arch=resnet_demo_wide" in argv for name, argv in runs.items() if "wide" in name)
    random = {s.out.name for s in capacity.steps if s.stage == "finetune" and "random" in s.out.name}
    assert {"random-seed0", "random-resnet_demo_wide-seed1"} <= random  # one baseline per width
    classes = build_plan(load_config(StudyConfig, "studies/classes", []))
    assert set(_pretrain_runs(classes)) == {"720", "2400", "4500", "720-top30", "2400-top30", "4500-top30"}
    assert not any(s.stage == "dedup" for s in classes.steps + capacity.steps)


def test_curriculum_axis_adds_a_suffix_only_to_its_non_default_value():
    before = _pretrain_runs(_plan())
    runs = _pretrain_runs(_plan("axes.curriculum=[none, efficienttrain]"))
    assert set(before) <= set(runs) and len(runs) == 2 * len(before)
    assert {"240", "7200", "240-efficienttrain", "7200-efficienttrain"} <= set(runs)
    assert "curriculum.name=efficienttrain" in runs["720-efficienttrain"]
    assert not any(a.startswith("curriculum.name=") for a in runs["720"])  # the config's own value
    first = _pretrain_runs(_plan("axes.curriculum=[efficienttrain, none]"))
    assert {"240", "240-none"} <= set(first) and "curriculum.name=efficienttrain" in first["240"]


def test_selftrain_students_are_planned_from_the_random_init_runs():
    plan = _plan("finetune.selftrain=true", "finetune.selftrain_set=['student.pseudo_ratio=0.5']")
    students = [s for s in plan.steps if s.stage == "selftrain"]
    teachers = [s for s in plan.steps if s.stage == "finetune" and "/finetune/random-seed" in str(s.out)]
    assert teachers and len(students) == len(teachers)
    for student, teacher in zip(students, teachers):
        argv = student.argv
        assert argv[argv.index("--teacher") + 1] == str(teacher.out)
        assert argv[argv.index("--unlabelled") + 1].endswith("subsets/7200")  # the largest subset
        assert "student.pseudo_ratio=0.5" in argv and student.out.name == "student"
    collect = next(s for s in plan.steps if s.label == "collect results")
    assert all(str(s.out) in collect.argv for s in students)
    with pytest.raises(ConfigError, match="selftrain"):
        _plan("finetune.selftrain=true", "finetune.modes=[frozen]")


def test_finetune_axes_vary_every_init_and_students_follow_their_teachers_level():
    plan = build_plan(load_config(StudyConfig, "studies/selftrain", []))
    runs = {s.out.name: s.argv for s in plan.steps if s.stage == "finetune"}
    assert len(runs) == 2 * 2 * 3 * 2  # (7200, random) x augment x fraction x seed
    assert {"random-seed0", "7200-seed1", "random-lsj_randaugment-f0.2-seed0", "7200-f0.5-seed1"} <= set(runs)
    assert "data.labelled_fraction=0.2" in runs["random-lsj_randaugment-f0.2-seed0"]
    assert "train.augment=lsj_randaugment" in runs["random-lsj_randaugment-f0.2-seed0"]
    students = {s.out.parent.name: s.argv for s in plan.steps if s.stage == "selftrain"}
    assert set(students) == {n for n in runs if n.startswith("random")}  # one per random-init run
    assert "finetune.train.augment=lsj_randaugment" in students["random-lsj_randaugment-f0.5-seed1"]
    assert "finetune.train.augment=flip" in students["random-f0.2-seed0"]
    with pytest.raises(ConfigError, match="labelled_fraction"):
        _plan("finetune.labelled_fraction=[1.0, 1.5]")
