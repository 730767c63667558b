"""The pretraining config schema and its translation into a DeepSpeed JSON config.

Rule 3 of the design: every subset pretrains on the same step schedule
(``schedule.steps``, ``schedule.global_batch``); only ``data.train`` differs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from datascale.config import require
from datascale.metrics_log import LoggingSection
from datascale.errors import ConfigError

from data_tools.loader.config import LoaderConfig
from data_tools.loader.curriculum import CurriculumConfig, CurriculumSchedule
from scaling.models.registry import BACKBONES


@dataclass
class DataSection:
    train: str = ""          # subset folder (datascale subsets make) or a whole shards folder
    eval: str = ""           # shards folder of the densely labelled eval set
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    log_keys: bool = False   # write the keys each rank consumed to data/keys-rank{r}.txt


@dataclass
class ModelSection:
    arch: str = "resnet_demo"
    head_prior: float = 0.01  # initial per-class probability (bias init of the head)
    init_from: str = ""       # backbone.pt of an earlier run ("ImageNet+300M" arm)
    channels_last: bool = True  # on a GPU

    def validate(self) -> None:
        require(self.arch in BACKBONES, "arch",
                f"unknown backbone architecture {self.arch!r}; registered: {', '.join(BACKBONES)}")


@dataclass
class OptimSection:
    name: Literal["rmsprop", "sgd", "adamw"] = "rmsprop"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    eps: float = 1.0              # RMSProp epsilon (1.0 as in Inception/TF-slim training)
    # "step": multiply the lr by lr_decay every lr_decay_every steps (the paper: 0.9 every 3M);
    # "cosine": anneal from lr to 0 over schedule.steps (lr_decay* unused), which ends a short
    # run at a small lr so that its final mAP is a plateau, not a snapshot of a falling loss.
    lr_schedule: Literal["step", "cosine"] = "step"
    lr_decay: float = 0.9
    lr_decay_every: int = 3_000_000
    warmup_steps: int = 0

    def validate(self) -> None:
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        require(self.lr_decay_every > 0, "lr_decay_every", "must be positive")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")


@dataclass
class LossSection:
    # 0 = score every class; N > 0 = every positive of the batch plus N sampled
    # negative classes per step (for 18k-class vocabularies on small batches).
    negatives_per_step: int = 0

    def validate(self) -> None:
        require(self.negatives_per_step >= 0, "negatives_per_step", "must be >= 0")


@dataclass
class DeepSpeedSection:
    zero_stage: int = 0
    micro_batch: int = 32      # per rank and forward pass (the paper: 32 per worker)
    grad_clip: float = 0.0     # 0 = off
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a capable GPU, fp32 on CPU

    def validate(self) -> None:
        # ZeRO-3 partitions parameters; a ResNet-152 with an 18k head (~100M
        # parameters) fits every GPU, so stages 0-2 cover the study.
        require(self.zero_stage in (0, 1, 2), "zero_stage", f"must be 0, 1 or 2, got {self.zero_stage}")
        require(self.micro_batch >= 1, "micro_batch", "must be >= 1")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0")


@dataclass
class ScheduleSection:
    steps: int = 1000          # optimizer steps, the same for every subset
    # > 0: the budget is this many passes over the subset instead ("same epochs"): steps become
    # ceil(epochs x subset images / global_batch), and lr_decay_every, eval_every and
    # checkpoint_every scale with them (resolve_schedule).
    epochs: float = 0.0
    global_batch: int = 32     # images per optimizer step over all ranks
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 2

    def validate(self) -> None:
        for name in ("steps", "global_batch", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.epochs >= 0 and math.isfinite(self.epochs), "epochs",
                f"must be 0 (same steps for every subset) or a positive number of passes, got {self.epochs}")


@dataclass
class MonitorSection:
    top_k: int = 100                                      # mAP@100
    weighting: Literal["mean", "frequency"] = "mean"      # frequency: weighted by positives per class
    max_images: int = 0                                   # 0 = the whole eval set

    def validate(self) -> None:
        require(self.top_k >= 1, "top_k", "must be >= 1")


@dataclass
class PretrainConfig:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    # EfficientTrain++ (data_tools.loader.curriculum): name none (off) or efficienttrain, with its stages.
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    seed: int = 0

    def validate(self) -> None:
        require(bool(self.data.train), "data.train", "is required: a subset folder or a shards folder")
        require(bool(self.data.eval), "data.eval", "is required: the shards folder of the eval set")
        entry, crop = BACKBONES.get(self.model.arch), self.data.loader.crop_size
        if entry is not None:  # an unknown arch is reported by model.arch's own check
            require(crop >= entry.min_image_size, "data.loader.image_size",
                    f"{self.model.arch} is meant for inputs of at least {entry.min_image_size} px, but the "
                    f"loader gives {crop} px crops (transform={self.data.loader.transform}); use "
                    "data.loader.transform=paper (resize 340, crop 299) or a demo architecture (resnet_demo)")
        if entry is not None and self.curriculum.enabled:
            smallest = self.curriculum.bands(crop)[0]
            require(smallest >= entry.min_image_size, "curriculum.sizes",
                    f"the first stage gives {smallest} px images ({self.curriculum.sizes[0]} x {crop} px), "
                    f"below the {entry.min_image_size} px {self.model.arch} is meant for; raise the first size")
        batch = self.data.loader.batch_size
        require(batch is None or batch == self.deepspeed.micro_batch, "data.loader.batch_size",
                f"is the per-rank micro batch, deepspeed.micro_batch={self.deepspeed.micro_batch}; "
                f"set deepspeed.micro_batch instead of data.loader.batch_size={batch} (or leave it unset)")


def grad_accumulation(cfg: PretrainConfig, world_size: int) -> int:
    """Gradient-accumulation steps so that micro x accum x ranks = global batch."""
    micro = cfg.deepspeed.micro_batch
    per_step = micro * world_size
    if cfg.schedule.global_batch % per_step:
        raise ConfigError(
            f"schedule.global_batch={cfg.schedule.global_batch} does not divide over "
            f"{world_size} rank(s) x deepspeed.micro_batch={micro}; choose a global batch that is a "
            f"multiple of {per_step}")
    return cfg.schedule.global_batch // per_step


def pick_precision(wanted: str, key: str, cuda: bool, bf16_ok: bool) -> str:
    """The precision to train in: ``auto`` is bf16 on a bf16 GPU, fp16 on other GPUs, fp32 on CPU.

    ``key`` names the setting in the error for bf16/fp16 on a machine without a GPU.
    """
    if wanted == "auto":
        return ("bf16" if bf16_ok else "fp16") if cuda else "fp32"
    if wanted != "fp32" and not cuda:
        raise ConfigError(f"{key}={wanted} needs a GPU; this machine has none (use fp32 or auto)")
    return wanted


def resolve_precision(cfg: PretrainConfig, cuda: bool, bf16_ok: bool) -> str:
    """:func:`pick_precision` of ``deepspeed.precision``."""
    return pick_precision(cfg.deepspeed.precision, "deepspeed.precision", cuda, bf16_ok)


def deepspeed_json(cfg: PretrainConfig, world_size: int, precision: str) -> dict:
    """The DeepSpeed config for this run (written to the run folder as deepspeed.json)."""
    return {
        "train_batch_size": cfg.schedule.global_batch,
        "train_micro_batch_size_per_gpu": cfg.deepspeed.micro_batch,
        "gradient_accumulation_steps": grad_accumulation(cfg, world_size),
        "gradient_clipping": cfg.deepspeed.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        # Our optimizer is a plain torch one (RMSProp as in the paper), wrapped by ZeRO.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10 ** 9,   # progress is ours (tqdm + metrics.jsonl)
        "wall_clock_breakdown": False,
        "seed": cfg.seed,
    }


def curriculum_schedule(cfg: PretrainConfig, ds_config: dict) -> CurriculumSchedule | None:
    """The run's curriculum over its step budget (None when ``curriculum.name`` is none): a
    batch's stage follows its optimizer step, micro-batches of one step share it."""
    if not cfg.curriculum.enabled:
        return None
    return CurriculumSchedule(cfg.curriculum, crop=cfg.data.loader.crop_size, steps=cfg.schedule.steps,
                              batches_per_step=ds_config["gradient_accumulation_steps"])


def resolve_schedule(cfg: PretrainConfig, subset_images: int) -> PretrainConfig:
    """The config with a "same epochs" budget turned into steps for this subset (a copy).

    With ``schedule.epochs`` 0 (the paper's subset study: same steps for every
    subset) the config is returned as it is. Otherwise steps = ceil(epochs x
    images / global_batch), and the step-counted settings keep their share of
    the schedule (lr decay, evaluations, checkpoints).
    """
    schedule = cfg.schedule
    if not schedule.epochs:
        return cfg
    steps = max(1, math.ceil(schedule.epochs * subset_images / schedule.global_batch))
    scale = steps / schedule.steps

    def scaled(value: int) -> int:
        return max(1, round(value * scale))

    new_schedule = dataclasses.replace(schedule, steps=steps, eval_every=scaled(schedule.eval_every),
                                       checkpoint_every=scaled(schedule.checkpoint_every),
                                       log_every=min(schedule.log_every, steps))
    optim = dataclasses.replace(cfg.optim, lr_decay_every=scaled(cfg.optim.lr_decay_every))
    return dataclasses.replace(cfg, schedule=new_schedule, optim=optim)


def budget_label(cfg: PretrainConfig) -> str:
    """The budget axis value of a run: ``epochs:E`` or ``steps:N`` (a results column)."""
    epochs = cfg.schedule.epochs
    return f"epochs:{epochs:g}" if epochs else f"steps:{cfg.schedule.steps}"
