"""The study config: one YAML file that names everything a scaling study runs.

See configs/studies/demo.yaml (the synthetic world on one machine) and
configs/studies/jft300m.yaml (the paper's study on real data on a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from datascale.config import require
from scaling.study.axes import AxesSection
from scaling.tasks import TASKS


@dataclass
class WorldSection:
    """The synthetic world to generate (omit with ``world: null`` for real data)."""

    config: str = "world/demo"
    set: list[str] = field(default_factory=list)


@dataclass
class DataSection:
    """Real data: existing shards of the pretraining collection and of the eval set."""

    shards: str = ""
    eval: str = ""


@dataclass
class TaskSection:
    """One downstream task: its fine-tuning config, dataset folder and test set to audit.

    With a synthetic world, ``data`` and ``test`` default to the world's
    dataset of the task; with real data they must be given.
    """

    config: str = ""                 # default: finetune/<task>
    data: str = ""                   # dataset folder (finetune --data)
    test: str = ""                   # test set file for the dedup audit (COCO JSON / VOC list)
    set: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # default: finetune.seeds


@dataclass
class ShardsSection:
    samples_per_shard: int = 1000
    set: list[str] = field(default_factory=list)

    def validate(self) -> None:
        require(self.samples_per_shard >= 1, "samples_per_shard", "must be >= 1")


@dataclass
class SubsetsSection:
    # Nested subset sizes: counts, fractions or 10M-style; the paper's 10:30:100:300.
    sizes: list[str] = field(default_factory=lambda: ["10M", "30M", "100M", "300M"])

    def validate(self) -> None:
        require(len(self.sizes) >= 1, "sizes", "needs at least one subset size")


@dataclass
class PretrainSection:
    config: str = "pretrain/demo"
    set: list[str] = field(default_factory=list)
    nproc: int = 1                   # ranks per node

    def validate(self) -> None:
        require(self.nproc >= 1, "nproc", "must be >= 1")


@dataclass
class DedupSection:
    enabled: bool = True
    config: str = "dedup/demo"
    set: list[str] = field(default_factory=list)
    ground_truth: str = ""           # labelled pairs CSV; default: the world's planted.csv


@dataclass
class FinetuneSection:
    tasks: list[str] = field(default_factory=lambda: ["detection", "segmentation", "pose"])
    modes: list[str] = field(default_factory=lambda: ["frozen", "finetune"])
    seeds: list[int] = field(default_factory=lambda: [0])
    random_init: bool = True         # the no-pretraining baseline
    set: list[str] = field(default_factory=list)  # applied to every task
    # Self-training (Zoph et al. 2020), init `selftrain` in the results: each fine-tune-mode
    # random-init run teaches a student on the largest subset's images, their labels unused
    # (`datascale selftrain`, configs/selftrain/TASK.yaml, then selftrain_set).
    selftrain: bool = False
    selftrain_set: list[str] = field(default_factory=list)
    # Fine-tuning axes (Zoph et al. 2020's grid): every run at each augmentation level and
    # labelled fraction; []: the task config's own value. The first value is the default
    # (no suffix in the run's name), so adding a value never renames a run.
    augment: list[str] = field(default_factory=list)            # train.augment levels
    labelled_fraction: list[float] = field(default_factory=list)  # data.labelled_fraction
    # Ranks of each fine-tuning run on a cluster (launcher: deepspeed): `launch --num-nodes 1
    # --nproc N finetune ...`, data-parallel on one node; every task's train.batch_size must divide by it.
    nproc: int = 1

    def validate(self) -> None:
        require(self.nproc >= 1, "nproc", "must be >= 1")
        for task in self.tasks:
            require(task in TASKS, "tasks", f"unknown task {task!r}; registered tasks: {', '.join(TASKS)}")
        for mode in self.modes:
            require(mode in ("frozen", "finetune"), "modes", f"unknown mode {mode!r} (frozen, finetune)")
        require(bool(self.seeds), "seeds", "needs at least one seed")
        from scaling.tasks.config import AUGMENT_LEVELS

        for level in self.augment:
            require(level in AUGMENT_LEVELS, "augment", f"unknown level {level!r} ({', '.join(AUGMENT_LEVELS)})")
        for fraction in self.labelled_fraction:
            require(0 < float(fraction) <= 1, "labelled_fraction", f"{fraction} is not in (0, 1]")
        for name, values in (("augment", self.augment), ("labelled_fraction", self.labelled_fraction)):
            require(len(set(values)) == len(values), name, f"lists a value twice: {values}")
        require(not self.selftrain or (self.random_init and "finetune" in self.modes), "selftrain",
                "the teachers are the random-init runs in fine-tune mode: needs random_init: true "
                "and finetune in modes")


@dataclass
class AnalysisSection:
    fit_set: list[str] = field(default_factory=list)
    # Metrics drawn in the figures (every metric is in the table and the fits).
    plot_metrics: list[str] = field(default_factory=lambda: ["AP", "AP50", "mIoU", "mAP@100"])
    plot_set: list[str] = field(default_factory=list)
    reference: str = ""              # CSV of reference points to overlay


@dataclass
class StudyConfig:
    name: str = "study"
    out: str = "study"               # every output goes under this folder
    world: Optional[WorldSection] = field(default_factory=WorldSection)
    data: DataSection = field(default_factory=DataSection)
    tasks: dict[str, TaskSection] = field(default_factory=dict)
    shards: ShardsSection = field(default_factory=ShardsSection)
    subsets: SubsetsSection = field(default_factory=SubsetsSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    axes: AxesSection = field(default_factory=AxesSection)
    dedup: DedupSection = field(default_factory=DedupSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    analysis: AnalysisSection = field(default_factory=AnalysisSection)
    launcher: Literal["local", "deepspeed"] = "local"
    hostfile: str = ""
    # Runs of a stage at once on this machine (datascale study --jobs), each with cores // jobs
    # threads (scaling.study.runner); 1: one at a time with every core.
    jobs: int = 1

    def validate(self) -> None:
        for task in self.tasks:
            require(task in TASKS, "tasks", f"unknown task {task!r}; registered tasks: {', '.join(TASKS)}")
        if self.world is None:
            require(bool(self.data.shards and self.data.eval), "data",
                    "without a synthetic world, data.shards and data.eval must name existing shards")
            for task in self.finetune.tasks:
                spec = self.tasks.get(task)
                require(spec is not None and bool(spec.data), f"tasks.{task}.data",
                        "must name the task's dataset folder when there is no synthetic world")
        require(self.launcher == "local" or bool(self.hostfile), "hostfile",
                "launcher: deepspeed needs a hostfile")
        require(self.jobs >= 1, "jobs", "must be >= 1")
        require(self.jobs == 1 or (self.launcher == "local" and self.pretrain.nproc == 1
                                   and self.finetune.nproc == 1), "jobs",
                "runs several single-process commands at once on this machine; with the DeepSpeed "
                "launcher or nproc > 1 each command already spreads over its ranks: set jobs: 1")
