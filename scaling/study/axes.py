"""The study's axes: every pretraining run as one point of the grid, and its command-line settings.

Sun et al. 2017 vary more than the data size: model capacity (ResNet-50/101/152,
Fig. 5), the training budget (same steps for every subset, or more epochs,
Tables 4-5), the label space (941 of 18,291 classes at equal images, Table 6)
and the initialisation ("ImageNet+300M"). A study config names them::

    subsets: {sizes: ["240", "720", "2400", "7200"]}     # the data axis
    axes:
      arch: [resnet_demo, resnet_demo_wide]               # capacity
      budget: ["steps:1", "steps:2", "epochs:4"]          # x the config's steps, or passes over each subset
      classes: [all, "top:50"]                            # all classes, or the 50 most frequent (equal images)
      init_from: ["", "study:7200"]                       # random init, or continue this study's 7200 run
      pretrain_seed: [0, 1, 2]                            # independent pretraining runs per point
      curriculum: [none, efficienttrain]                  # EfficientTrain++ pretraining (the config's schedule)

:func:`expand` gives every combination (with the data sizes). A run's folder
is named by its size plus only the values that differ from the first of each
axis, so adding a value never renames, and so never redoes, the runs that
were there before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from datascale.config import require

BUDGET = re.compile(r"^(steps|epochs):(\d+(\.\d+)?)$")
CLASSES = re.compile(r"^(all|top:(\d+))$")
CURRICULA = ("none", "efficienttrain")  # data_tools.loader.curriculum.CurriculumConfig.name


@dataclass
class AxesSection:
    """The grid a study expands (module docstring); the first value of each axis is its default."""

    arch: list[str] = field(default_factory=list)        # []: the pretraining config's model.arch
    budget: list[str] = field(default_factory=lambda: ["steps:1"])  # the config's schedule for every subset
    classes: list[str] = field(default_factory=lambda: ["all"])
    init_from: list[str] = field(default_factory=lambda: [""])       # "": random init
    pretrain_seed: list[int] = field(default_factory=list)           # []: the config's seed
    curriculum: list[str] = field(default_factory=list)              # []: the config's curriculum.name

    def validate(self) -> None:
        require(bool(self.budget) and bool(self.classes) and bool(self.init_from), "axes",
                "budget, classes and init_from each need at least one value")
        from scaling.models.registry import BACKBONES

        for arch in self.arch:
            require(arch in BACKBONES, "arch", f"unknown architecture {arch!r}; registered: {', '.join(BACKBONES)}")
        for budget in self.budget:
            match = BUDGET.match(str(budget))
            require(bool(match) and float(match.group(2)) > 0, "budget",
                    f"{budget!r}: use steps:M (M x the config's steps for every subset) or epochs:E")
        for classes in self.classes:
            match = CLASSES.match(str(classes))
            require(bool(match) and (classes == "all" or int(match.group(2)) >= 1), "classes",
                    f"{classes!r}: use all or top:K (the K most frequent classes)")
        require(not str(self.init_from[0]).startswith("study:"), "init_from",
                f"the first value ({self.init_from[0]!r}) is the default that study:SIZE continues "
                "from, so it cannot itself be study:SIZE; put \"\" (random init) or a checkpoint first")
        for curriculum in self.curriculum:
            require(curriculum in CURRICULA, "curriculum", f"{curriculum!r}: use one of {', '.join(CURRICULA)}")
        for name, values in (("arch", self.arch), ("budget", self.budget), ("classes", self.classes),
                             ("init_from", self.init_from), ("pretrain_seed", self.pretrain_seed),
                             ("curriculum", self.curriculum)):
            require(len(set(map(str, values))) == len(values), name, f"lists a value twice: {values}")


@dataclass(frozen=True)
class PretrainPoint:
    """One pretraining run of the grid."""

    size: str
    arch: str
    budget: str
    classes: str
    init_from: str
    seed: int
    curriculum: str = "none"

    def name(self, defaults: "PretrainPoint") -> str:
        """The run folder's name: the size, then each value that differs from the defaults."""
        parts = [self.size]
        if self.arch != defaults.arch:
            parts.append(self.arch)
        if self.budget != defaults.budget:
            parts.append(self.budget.replace(":", ""))
        if self.classes != defaults.classes:
            parts.append(self.classes.replace(":", ""))
        if self.init_from != defaults.init_from:
            parts.append("from-" + re.sub(r"[^A-Za-z0-9.]+", "-", self.init_from).strip("-"))
        if self.seed != defaults.seed:
            parts.append(f"seed{self.seed}")
        if self.curriculum != defaults.curriculum:
            parts.append(self.curriculum)
        return "-".join(parts)

    def subsets_folder(self, root: Path) -> Path:
        """Where its subset is: ``subsets/``, or ``subsets_topK/`` for a class-restricted one."""
        return root / "subsets" if self.classes == "all" else root / f"subsets_{self.classes.replace(':', '')}"


def expand(axes: AxesSection, sizes: list[str], default_arch: str, default_seed: int,
           default_curriculum: str = "none") -> list[PretrainPoint]:
    """Every point of the grid; points that start from another run of the study come last."""
    archs = axes.arch or [default_arch]
    seeds = axes.pretrain_seed or [default_seed]
    curricula = axes.curriculum or [default_curriculum]
    points = [PretrainPoint(size, arch, budget, classes, init, seed, curriculum)
              for init in axes.init_from for arch in archs for budget in axes.budget
              for classes in axes.classes for curriculum in curricula for seed in seeds for size in sizes]
    return sorted(points, key=lambda p: p.init_from.startswith("study:"))


def defaults(axes: AxesSection, sizes: list[str], default_arch: str, default_seed: int,
             default_curriculum: str = "none") -> PretrainPoint:
    return PretrainPoint(sizes[-1], (axes.arch or [default_arch])[0], axes.budget[0], axes.classes[0],
                         axes.init_from[0], (axes.pretrain_seed or [default_seed])[0],
                         (axes.curriculum or [default_curriculum])[0])


def point_sets(point: PretrainPoint, base, runs: dict[str, Path]) -> list[str]:
    """The ``--set`` overrides of a point, given the resolved base pretraining config and the
    study's default runs by size (for ``init_from: study:SIZE``)."""
    sets = [f"model.arch={point.arch}", f"seed={point.seed}"]
    if point.curriculum != base.curriculum.name:
        sets.append(f"curriculum.name={point.curriculum}")
    kind, value = point.budget.split(":")
    if kind == "epochs":
        sets.append(f"schedule.epochs={value}")
    elif float(value) != 1:
        scale = float(value)
        schedule, optim = base.schedule, base.optim
        sets += [f"schedule.steps={round(schedule.steps * scale)}",
                 f"schedule.eval_every={round(schedule.eval_every * scale)}",
                 f"schedule.checkpoint_every={round(schedule.checkpoint_every * scale)}",
                 f"optim.lr_decay_every={round(optim.lr_decay_every * scale)}"]
    if point.init_from.startswith("study:"):
        size = point.init_from.split(":", 1)[1]
        require(size in runs, "axes.init_from", f"{point.init_from}: no default run of size {size} in this study")
        sets.append(f"model.init_from={runs[size] / 'backbone.pt'}")
    elif point.init_from:
        sets.append(f"model.init_from={point.init_from}")
    return sets
