"""The typed config of ``datascale finetune`` (no torch import: the CLI's help stays fast).

One schema for all tasks: ``data`` and ``train`` are shared, and each task
reads its own section (``detection``, ``segmentation``, ``pose``); the others
keep their defaults and are recorded but unused. Built-in files live in
``configs/finetune/`` (demo-sized ``detection``/``segmentation``/``pose`` and
the paper-sized ``*_paper`` variants).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from datascale.config import require
from datascale.errors import ConfigError
from datascale.metrics_log import LoggingSection
from scaling.models.registry import BACKBONES
from scaling.tasks import TASKS

# The names of scaling.tasks.augment.AUGMENT_LEVELS, kept here so that loading a config needs no torch.
AUGMENT_LEVELS = ("none", "flip", "randaugment", "lsj", "lsj_randaugment")


@dataclass
class DataConfig:
    """Where the task's dataset is. ``root`` follows the synthetic world's layout
    (docs/formats.md); the ``*_annotations`` / ``*_images`` keys override single paths
    (e.g. real COCO: ``train_images: COCO/train2017``)."""

    root: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    train_annotations: str | None = None  # COCO JSON (detection, pose) or image list .txt (segmentation)
    train_images: str | None = None
    test_annotations: str | None = None
    test_images: str | None = None
    cleaned_test: str | None = None  # the test set without duplicates of pretraining images (dedup audit)
    image_size: int = 128  # images are resized so that their long side has this many pixels
    max_train_images: int = 0  # 0 = all
    # The labelled training images kept: the first round(fraction x N) of them in the order of their
    # hash rank (data_tools.ranks, salted with labelled_salt), so a smaller fraction is a prefix of a
    # larger one (0.2 inside 0.5 inside 1.0) whatever the file's order. Applied before max_train_images.
    labelled_fraction: float = 1.0
    labelled_salt: str = "labelled"
    cache_images: bool = True  # keep decoded, resized images in memory (demo-sized data only)
    num_workers: int = 0

    def validate(self) -> None:
        require(self.image_size >= 32, "image_size", f"must be at least 32 pixels, got {self.image_size}")
        require(self.max_train_images >= 0, "max_train_images", "must be 0 (all) or positive")
        require(0 < self.labelled_fraction <= 1, "labelled_fraction",
                f"must lie in (0, 1] (e.g. 0.2, 0.5, 1.0), got {self.labelled_fraction}")
        require(self.num_workers >= 0, "num_workers", "must be 0 or positive")


@dataclass
class TrainConfig:
    """The one fine-tuning loop: ``steps`` optimizer steps of ``batch_size`` samples."""

    steps: int = 60
    batch_size: int = 8
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 10  # linear warm-up, then cosine decay to zero
    clip_grad_norm: float = 10.0  # 0 = off
    # The same rule in both modes, which differ only in which weights train:
    # "update": the batch norms of the layers that train update their statistics
    # (fine-tune: all; frozen: conv5's), the frozen layers' stay fixed;
    # "frozen": every batch norm keeps its statistics (what detection codebases do
    # with 1-2 images per GPU).
    bn_stats: Literal["update", "frozen"] = "update"
    # A random backbone's batch norms start at mean 0, variance 1, so activations grow
    # layer by layer (std ~4e3 at conv4 of a ResNet-101): its statistics are first
    # estimated on this many training batches (forward passes only, before anything is
    # frozen), so the random-init baseline is not handicapped by never-seen statistics.
    random_bn_batches: int = 10
    # Scale a pretrained trunk's convs back to a fresh init's weight norm (function unchanged):
    # batch norm makes the effective learning rate lr / |w|^2, and pretraining grew |w| (docs/transfer.md).
    rescale_pretrained: bool = True
    hflip: bool = True  # random horizontal flips at every augment level but none (pose swaps left/right)
    # scaling.tasks.augment: none | flip (flips only: what fine-tuning always did) | randaugment |
    # lsj (large-scale jitter) | lsj_randaugment; applied to images and their boxes, masks, keypoints.
    augment: str = "flip"
    augment_magnitude: int = 9  # RandAugment magnitude, 0..30
    lsj_scale: list[float] = field(default_factory=lambda: [0.1, 2.0])  # LSJ resize factor range
    log_every: int = 10
    eval_batch_size: int = 16
    threads: int = 0  # torch CPU threads; 0 = every core this process may use (1 on a busy shared machine)
    # auto: bf16 autocast on a bf16 GPU, fp16 (with a gradient scaler) on other GPUs, fp32 on CPU,
    # the rule of pretraining's deepspeed.precision; bf16/fp16 need a GPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def validate(self) -> None:
        require(self.steps >= 1, "steps", f"must be at least 1, got {self.steps}")
        require(self.batch_size >= 1, "batch_size", "must be at least 1")
        require(self.eval_batch_size >= 1, "eval_batch_size", "must be at least 1")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0 <= self.momentum < 1, "momentum", "must lie in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "must be 0 or positive")
        require(self.warmup_steps >= 0, "warmup_steps", "must be 0 or positive")
        require(self.clip_grad_norm >= 0, "clip_grad_norm", "must be 0 (off) or positive")
        require(self.log_every >= 1, "log_every", "must be at least 1")
        require(self.threads >= 0, "threads", "must be 0 (all cores) or positive")
        require(self.random_bn_batches >= 0, "random_bn_batches", "must be 0 (off) or positive")
        require(self.augment in AUGMENT_LEVELS, "augment",
                f"unknown level {self.augment!r}; choose one of {', '.join(AUGMENT_LEVELS)}")
        require(0 <= self.augment_magnitude <= 30, "augment_magnitude",
                f"must lie in 0..30 (RandAugment's scale), got {self.augment_magnitude}")
        require(len(self.lsj_scale) == 2 and 0 < self.lsj_scale[0] <= self.lsj_scale[1], "lsj_scale",
                f"needs [low, high] with 0 < low <= high, e.g. [0.1, 2.0]; got {self.lsj_scale}")


@dataclass
class DistConfig:
    """Data-parallel fine-tuning (``finetune --nproc N``, ``launch finetune``): DDP, gloo on CPU, nccl on CUDA.

    ``train.batch_size`` is the global batch: each of the N ranks trains on
    batch_size / N disjoint samples of it per step (a batch that does not
    divide is refused), so N ranks take the steps one rank takes. One process
    runs exactly as without this section.
    """

    # The learning rate for the global batch: none = train.lr as given; linear = train.lr x
    # train.batch_size / reference_batch (Goyal et al. 2017), for a train.lr tuned at reference_batch.
    lr_scaling: Literal["none", "linear"] = "none"
    reference_batch: int = 8
    # The batch norms that update their statistics (train.bn_stats=update) on more than one rank:
    # frozen = they keep their statistics, as train.bn_stats=frozen does; sync = SyncBatchNorm,
    # statistics over the global batch as on one rank (GPU only: torch has no CPU SyncBatchNorm).
    # Batch norms that are already fixed (frozen mode's conv1..conv4, bn_stats=frozen) stay fixed.
    batchnorm: Literal["frozen", "sync"] = "frozen"
    log_samples: bool = False  # data/samples-rank{R}.txt: "step<TAB>dataset index" per sample trained on

    def validate(self) -> None:
        require(self.reference_batch >= 1, "reference_batch", "must be at least 1")


def per_rank_batch(cfg: "FinetuneConfig", world_size: int) -> int:
    """The samples each of ``world_size`` ranks trains on per step; ConfigError unless it divides."""
    batch = cfg.train.batch_size
    if batch % world_size:
        raise ConfigError(f"train.batch_size={batch} (the global batch) does not divide over {world_size} "
                          f"ranks; set train.batch_size to a multiple of {world_size} or change --nproc")
    return batch // world_size


def scaled_lr(cfg: "FinetuneConfig") -> float:
    """``train.lr`` after ``dist.lr_scaling`` (the same at any number of ranks: the global batch is)."""
    if cfg.dist.lr_scaling == "linear":
        return cfg.train.lr * cfg.train.batch_size / cfg.dist.reference_batch
    return cfg.train.lr


@dataclass
class DetectionConfig:
    """Faster R-CNN: C4 (conv1-conv4 shared by RPN and box head, conv5 on RoIAlign features) or FPN."""

    fpn: bool = False
    fpn_channels: int = 64
    anchor_sizes: list[int] = field(default_factory=lambda: [16, 32, 64])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    roi_output_size: int = 14  # C4: conv5 halves it; FPN: the MLP head sees this size
    # RoIAlign sample points per bin side (0 = adaptive, torchvision's default is 2). Its CPU
    # backward pass dominates a fine-tuning step; 1 suffices when bins are smaller than a feature pixel.
    roi_sampling_ratio: int = 2
    rpn_batch_size_per_image: int = 64
    rpn_pre_nms_top_n_train: int = 300
    rpn_post_nms_top_n_train: int = 150
    rpn_pre_nms_top_n_test: int = 150
    rpn_post_nms_top_n_test: int = 75
    box_batch_size_per_image: int = 64
    box_score_thresh: float = 0.01
    box_detections_per_img: int = 50

    def validate(self) -> None:
        require(bool(self.anchor_sizes) and min(self.anchor_sizes) > 0, "anchor_sizes",
                "needs positive sizes in pixels")
        require(bool(self.aspect_ratios) and min(self.aspect_ratios) > 0, "aspect_ratios",
                "needs positive ratios")
        require(self.roi_output_size >= 2, "roi_output_size", "must be at least 2")
        require(self.roi_sampling_ratio >= 0, "roi_sampling_ratio", "must be 0 (adaptive) or positive")
        require(0 <= self.box_score_thresh < 1, "box_score_thresh", "must lie in [0, 1)")


@dataclass
class SegmentationConfig:
    """DeepLab: four parallel 3x3 atrous branches after conv5 whose scores are summed."""

    atrous_rates: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    output_stride: Literal[8, 16] = 8
    num_classes: int = 0  # 0 = the number of lines in the dataset's labels.txt

    def validate(self) -> None:
        require(len(self.atrous_rates) >= 1 and min(self.atrous_rates) >= 1, "atrous_rates",
                "needs at least one rate, each at least 1")
        require(self.num_classes >= 0, "num_classes", "must be 0 (from labels.txt) or positive")


@dataclass
class PoseConfig:
    """Top-down heatmaps (SimpleBaseline): deconvolutions on conv5 inside each person box."""

    input_size: int = 96  # square crop around each person box, in pixels
    output_stride: Literal[16, 32] = 32  # 16 dilates conv5: heatmaps twice as fine for the same cost of deconvolutions
    box_expand: float = 1.25
    deconv_layers: int = 3
    deconv_channels: int = 64
    heatmap_sigma: float = 1.5  # Gaussian target width in heatmap pixels
    default_oks_sigma: float = 0.05  # per-keypoint OKS sigma when the category gives none

    def validate(self) -> None:
        require(self.input_size >= 32, "input_size", "must be at least 32 pixels")
        require(self.box_expand >= 1.0, "box_expand", "must be at least 1")
        require(1 <= self.deconv_layers <= 5, "deconv_layers", "must lie in 1..5")
        require(self.heatmap_sigma > 0, "heatmap_sigma", "must be positive")
        require(self.default_oks_sigma > 0, "default_oks_sigma", "must be positive")


@dataclass
class FinetuneConfig:
    """``datascale finetune``: one downstream run on one backbone."""

    task: str = "detection"  # a name registered in scaling.tasks.TASKS
    mode: Literal["frozen", "finetune"] = "finetune"
    init: Literal["random", "pretrained", "checkpoint"] = "pretrained"
    backbone: str | None = None  # backbone.pt, a backbone folder, or another checkpoint
    arch: str | None = None  # None = the architecture named in backbone.json
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def validate(self) -> None:
        require(self.task in TASKS, "task", f"unknown task {self.task!r}; registered tasks: {', '.join(TASKS)}")
        require(self.arch is None or self.arch in BACKBONES, "arch",
                f"unknown backbone architecture {self.arch!r}; registered: {', '.join(BACKBONES)}")
        if self.arch in BACKBONES:
            check_input_size(self, self.arch)
        if self.init == "random":
            require(self.backbone is None, "backbone", "init=random takes no backbone file; "
                    "drop the backbone or choose init=pretrained")
            require(self.arch is not None, "arch", "init=random needs an architecture, e.g. arch=resnet_demo")
        else:
            require(self.backbone is not None, "backbone",
                    f"init={self.init} needs a backbone file (--backbone PATH), or use --init random")


def check_input_size(cfg: FinetuneConfig, arch: str) -> None:
    """Refuse a demo-sized input on a big backbone: a stride-32 ResNet-50 on 128 px images sees a
    4x4 conv5 map, which silently ruins a real study. Called on load (when ``arch`` is set) and
    once the backbone file has named its architecture."""
    key, size = ("pose.input_size", cfg.pose.input_size) if cfg.task == "pose" else ("data.image_size",
                                                                                      cfg.data.image_size)
    least = BACKBONES[arch].min_image_size
    require(size >= least, key, f"is {size} px, but {arch} is meant for inputs of at least {least} px; "
            f"use the paper-sized config finetune/{cfg.task}_paper, or a demo architecture (resnet_demo)")
