"""The typed config of ``datascale selftrain`` (no torch import).

``pseudo`` says how the teacher's predictions become pseudo-labels (step A),
``student`` how they are mixed into training (step B), and ``finetune`` is
the student's whole fine-tuning config: by default the teacher's own, as its
run folder recorded it, with the built-in ``configs/selftrain/TASK.yaml``'s
``finetune:`` entries and then ``--set finetune.KEY=VALUE`` on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datascale.config import require
from scaling.tasks import TASKS
from scaling.tasks.config import FinetuneConfig


@dataclass
class PseudoSection:
    """Step A: the teacher labels the unlabelled images into ``OUT/pseudo/`` shards."""

    # Detection: boxes whose score is below this are not written (Zoph et al. 2020 used 0.5).
    box_score_threshold: float = 0.5
    # Segmentation: pixels whose top class probability is below this become 255 (ignore).
    pixel_threshold: float = 0.5
    # Pose: keypoints whose heatmap peak is below this get visibility 0 (not trained on).
    keypoint_threshold: float = 0.2
    images_per_shard: int = 100  # an image folder is cut into shards of this many (shard input: one per shard)
    batch_size: int = 16         # teacher inference batch
    max_images: int = 0          # 0 = all; else the first N unlabelled images (in shard order)

    def validate(self) -> None:
        for key in ("box_score_threshold", "pixel_threshold", "keypoint_threshold"):
            value = getattr(self, key)
            require(0 <= value < 1, key, f"must lie in [0, 1), got {value}")
        require(self.images_per_shard >= 1, "images_per_shard", "must be at least 1")
        require(self.batch_size >= 1, "batch_size", "must be at least 1")
        require(self.max_images >= 0, "max_images", "must be 0 (all) or positive")


@dataclass
class StudentSection:
    """Step B: every step trains on a labelled batch and a pseudo-labelled batch."""

    # Pseudo-labelled images per labelled image in each step (Zoph et al.: 1:1); the pseudo batch
    # holds round(pseudo_ratio x finetune.train.batch_size) images, at least 1.
    pseudo_ratio: float = 1.0
    pseudo_weight: float = 1.0   # the pseudo loss's weight in the total
    # Scale the pseudo loss by running mean(labelled loss) / running mean(pseudo loss) before the weight,
    # so the two losses start on one scale whatever the number of pseudo boxes or pixels.
    loss_normalisation: bool = True

    def validate(self) -> None:
        require(self.pseudo_ratio > 0, "pseudo_ratio", f"must be positive, got {self.pseudo_ratio}")
        require(self.pseudo_weight >= 0, "pseudo_weight", "must be 0 or positive")


@dataclass
class SelftrainConfig:
    """``datascale selftrain``: pseudo-label unlabelled images with a teacher run, train a student."""

    task: str = "detection"
    teacher: str | None = None     # a finetune (or selftrain student) run folder with model.pt
    unlabelled: str | None = None  # shards folder (sizes.json), subset folder (subset.json) or image folder
    pseudo: PseudoSection = field(default_factory=PseudoSection)
    student: StudentSection = field(default_factory=StudentSection)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        require(self.task in TASKS, "task", f"unknown task {self.task!r}; registered tasks: {', '.join(TASKS)}")
        require(self.teacher is not None, "teacher", "needs the teacher's run folder (--teacher RUN)")
        require(self.unlabelled is not None, "unlabelled",
                "needs the unlabelled images: a shards, subset or image folder (--unlabelled PATH)")
        require(self.finetune.task == self.task, "finetune.task",
                f"is {self.finetune.task!r} but the self-training task is {self.task!r}")
