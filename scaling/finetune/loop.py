"""The one downstream training loop, for every task and mode (``datascale finetune``).

    datascale finetune --task detection --mode frozen \\
        --backbone runs/pretrain/30M/backbone.pt --data WORLD/detection --out runs/finetune/detection/30M-frozen

Steps: load the backbone (or build a random one), freeze conv1..conv4 in
``frozen`` mode (parameters and batch-norm statistics, as in the paper), read
and check the task's data, build the task model (``scaling.tasks``), train
``train.steps`` steps (metrics.jsonl, a tqdm bar, a stop on a NaN/inf loss),
evaluate on the original test set and, when ``data.cleaned_test`` names the
de-duplicated one, on that too, then write metrics.json and complete.json.

Batch norm (``train.bn_stats``) follows one rule in both modes, so frozen and
fine-tune differ only in which weights train: with ``update`` (the demo
configs: 8+ images per step give usable statistics) the batch norms of the
layers that train update their statistics and the frozen ones' stay fixed;
with ``frozen`` (the paper-sized detection and segmentation configs, as
detection and DeepLab codebases do with a few images per GPU) every batch
norm keeps its statistics. A random backbone's statistics are first estimated
on ``train.random_bn_batches`` training batches (``estimate_batchnorm_stats``).

A run folder is resumable in the lineage sense only: a complete run with the
same config and inputs is skipped; an interrupted one is restarted from step
0 (demo runs take seconds, so no mid-run checkpoints are written). The final
task model is saved as ``model.pt`` (a plain state dict, read back with
``torch.load(weights_only=True)``) with ``model.json`` (what rebuilds it), so
a run can be a teacher for ``datascale selftrain``.

``datascale selftrain`` runs this same loop with :class:`PseudoData`: every
step then adds the loss of a batch of pseudo-labelled images, weighted.

On N ranks (``--nproc N``, ``datascale launch finetune``) the same loop runs
data-parallel (:mod:`scaling.finetune.distributed`): ``train.batch_size`` is
the global batch, each rank trains on its disjoint share, rank 0 evaluates and
writes the run folder. On a GPU the step runs in ``train.precision`` (autocast).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from datascale import procs
from datascale.atomic import atomic_path, write_json
from datascale.errors import DatascaleError, DataError
from datascale.lineage import config_record, mark_complete, prepare_output_dir, sha256_file
from datascale.metrics_log import MetricsLog
from scaling.finetune.distributed import World, distribute, join_world, rank_loader, to_device
from scaling.models.backbones import build_backbone, fix_batchnorm_stats, freeze_stages, rescale_to_init_norm
from scaling.models.files import backbone_paths, load_backbone
from scaling.tasks import get_task
from scaling.tasks.common import TEST_SETS
from scaling.tasks.config import FinetuneConfig, TrainConfig, check_input_size, scaled_lr

log = logging.getLogger(__name__)

METRICS_LOG = "metrics.jsonl"
METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
MODEL_FILE = "model.pt"
MODEL_META = "model.json"


@dataclass
class PseudoData:
    """Pseudo-labelled training images beside the labelled ones (``datascale selftrain``).

    ``dataset`` yields items in the task's training format. Each step adds
    ``weight`` x the loss of ``batch_size`` of them; with ``normalise`` that
    loss is first scaled by (running mean of the labelled loss) / (running mean
    of the pseudo loss), so the two start on one scale (Zoph et al. 2020's loss
    normalisation; the running means use momentum 0.9 and carry no gradient).
    """

    dataset: Any
    batch_size: int
    weight: float = 1.0
    normalise: bool = False
    _means: list = field(default_factory=lambda: [0.0, 0.0])

    def scale(self, labelled: float, pseudo: float) -> float:
        if not self.normalise:
            return self.weight
        first = self._means == [0.0, 0.0]
        self._means = [value if first else 0.9 * old + 0.1 * value
                       for old, value in zip(self._means, (labelled, pseudo))]
        return self.weight * self._means[0] / max(self._means[1], 1e-12)


# --------------------------------------------------------------------------- optimizers


def _sgd(params: list, train: TrainConfig, lr: float):
    return torch.optim.SGD(params, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)


def _adamw(params: list, train: TrainConfig, lr: float):
    return torch.optim.AdamW(params, lr=lr, weight_decay=train.weight_decay)


#: ``train.optimizer`` name -> factory(trainable parameters, train config, learning rate).
OPTIMIZERS: dict[str, Callable[[list, TrainConfig, float], Any]] = {"sgd": _sgd, "adamw": _adamw}


def lr_factor(step: int, train: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``steps``."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def choose_threads(requested: int, ranks_here: int = 1) -> int:
    """CPU threads for torch: ``requested``, or (0) every core this process may use,
    shared out between the ``ranks_here`` ranks of a distributed run on this machine.

    The default depends only on the machine, never on its momentary load, so
    that a run repeated (or resumed by the study) computes the same numbers:
    the thread count changes the order of floating-point reductions. On a
    shared machine set ``train.threads=1``: torch's OpenMP threads spin while
    they wait for each other, and two threads fighting other processes for
    two cores ran a step up to 8x slower than one thread
    (benchmarks/bench_finetune.py).

    ``datascale study --jobs N`` runs N commands at once and gives each its
    share of the cores in ``DATASCALE_THREADS`` (threads per process), which
    the default then is.
    """
    if requested:
        return requested
    shared = os.environ.get(procs.THREADS_ENV, "")
    if shared.isdigit() and int(shared) >= 1:
        return int(shared)
    return max(1, len(os.sched_getaffinity(0)) // ranks_here)


# --------------------------------------------------------------------------- backbone + lineage


def initial_backbone(cfg: FinetuneConfig, dilation: tuple[bool, bool, bool]):
    """(backbone, meta) to start from: random (``init=random``) or loaded from ``cfg.backbone``.

    ``meta`` is backbone.json's content ({} plus ``arch`` for a bare checkpoint).
    """
    if cfg.init == "random":
        # Seeded here, not only in prepare(): the weights are drawn now, and an unseeded draw
        # made random init differ from run to run of one command (pose AP 0.092 vs 0.063).
        torch.manual_seed(cfg.seed)
        return build_backbone(cfg.arch, replace_stride_with_dilation=dilation), {"arch": cfg.arch}
    weights, meta_path = backbone_paths(cfg.backbone)
    if cfg.init == "pretrained" and not meta_path.is_file():
        raise DataError(f"init=pretrained expects {meta_path} beside the weights (written by "
                        "save_backbone); for another checkpoint use --init checkpoint --arch ARCH")
    backbone, meta = load_backbone(weights, cfg.arch, replace_stride_with_dilation=dilation)
    if cfg.train.rescale_pretrained:
        log.info("rescaled %d pretrained convs to the weight norm of a fresh init", rescale_to_init_norm(backbone))
    return backbone, meta


def run_lineage(cfg: FinetuneConfig, meta: dict) -> dict:
    """The ``lineage:`` mapping of config.yaml (docs/formats.md, "Run folders")."""
    source = meta.get("lineage") or {}
    weights = None
    if cfg.backbone is not None:
        weights = backbone_paths(cfg.backbone)[0]
    pretrain_run = source.get("pretrain_run")
    if pretrain_run is None and cfg.init == "pretrained" and weights is not None:
        pretrain_run = str(weights.resolve().parent)
    return {
        "task": cfg.task, "mode": cfg.mode, "seed": cfg.seed, "arch": meta.get("arch", cfg.arch),
        "init": cfg.init, "pretrain_run": pretrain_run,
        "augment": cfg.train.augment, "augment_magnitude": cfg.train.augment_magnitude,
        "labelled_fraction": cfg.data.labelled_fraction,
        "subset_name": source.get("subset_name"), "subset_images": source.get("subset_images"),
        "num_classes": meta.get("num_classes"), "steps": cfg.train.steps,
        "pretrain_steps": source.get("steps"),
        # What the schedule bought the backbone (scaling.pretrain.loop.training_budget).
        **{key: source.get(key) for key in ("pretrain_passes", "pretrain_map_gain", "pretrain_converged",
                                            "budget", "classes", "pretrain_seed", "init_from",
                                            "curriculum")},
        "backbone": str(weights.resolve()) if weights else None,
        "backbone_sha256": sha256_file(weights) if weights else None,
    }


# --------------------------------------------------------------------------- the loop


def _batches(loader):
    """Endless batches: the loader reshuffles on every pass."""
    while True:
        yield from loader


def _step_terms(task, model, batch, pseudo: PseudoData | None, pseudo_batches, world: World) -> dict:
    """The named loss terms of one step: the labelled batch's, then the pseudo batch's (scaled)."""
    with world.autocast():
        terms = task.loss(model, to_device(batch, world.device))
    if pseudo is not None:
        with world.autocast():
            pseudo_terms = task.loss(model, to_device(next(pseudo_batches), world.device))
        factor = pseudo.scale(float(sum(terms.values()).detach()), float(sum(pseudo_terms.values()).detach()))
        terms.update({f"pseudo_{k}": factor * v for k, v in pseudo_terms.items()})
    return terms


def train(task, model, train_set, cfg: FinetuneConfig, metrics: MetricsLog, progress: dict,
          pseudo: PseudoData | None = None, world: World = World(), sample_log: Path | None = None) -> None:
    """Run ``cfg.train.steps`` optimizer steps; log to metrics.jsonl every ``log_every`` steps.

    On several ranks ``model`` is DDP-wrapped, each rank trains on its share of
    every global batch and logged losses are means over the ranks. With
    ``sample_log``, each step's dataset indices are appended to it. Raises
    DatascaleError (on every rank) when the loss becomes NaN or inf. Memory: one
    batch plus the model's activations; time: steps x step time (benchmarks/bench_finetune.py).
    """
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[t.optimizer](params, t, scaled_lr(cfg))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, t))
    scaler = torch.amp.GradScaler(world.device.type, enabled=world.precision == "fp16")
    batches = _batches(rank_loader(train_set, task.collate, t.batch_size, cfg.seed, cfg.data.num_workers, world))
    pseudo_batches = (_batches(rank_loader(pseudo.dataset, task.collate, pseudo.batch_size, cfg.seed + 1,
                                           cfg.data.num_workers, world)) if pseudo is not None else None)
    model.train()
    started = time.perf_counter()
    bar = tqdm(range(1, t.steps + 1), desc=f"finetune {task.name} ({cfg.mode})", unit="step",
               disable=None if world.main else True)
    for step in bar:
        progress["step"] = step
        batch = next(batches)
        if sample_log is not None:
            with open(sample_log, "a", encoding="utf-8") as handle:
                handle.write("".join(f"{step}\t{i}\n" for i in task.indices(batch)))
        terms = _step_terms(task, model, batch, pseudo, pseudo_batches, world)
        loss = sum(terms.values())
        if world.any(not torch.isfinite(loss).item()):
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise DatascaleError(f"the training loss became {loss.item()} at step {step} ({values}) "
                                 f"on rank {world.rank} of {world.size}; lower train.lr (now {t.lr}) "
                                 "or check the annotations")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # DDP averages the gradients over the ranks here
        if t.clip_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        if step % t.log_every == 0 or step == t.steps:
            elapsed = time.perf_counter() - started
            values = world.mean([loss.item(), *(v.item() for v in terms.values())])
            record = {"step": step, "loss": values[0], **dict(zip(terms, values[1:])),
                      "lr": optimizer.param_groups[0]["lr"], "seconds_per_step": elapsed / step}
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")


def estimate_batchnorm_stats(task, backbone, cfg: FinetuneConfig, train_set, meta: dict) -> int:
    """Set every batch norm's statistics of ``backbone`` to their average over training batches.

    Runs ``train.random_bn_batches`` forward passes of a throw-away task model in
    training mode (no gradients, momentum None: a cumulative average, as
    "precise BN" does), so each layer sees inputs normalised by the layers below.
    Weights do not change. Returns the number of images seen.
    """
    model = task.build_model(backbone, cfg, train_set, meta)
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True,
                                         collate_fn=task.collate,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    seen = 0
    model.train()
    with torch.no_grad():
        for _, batch in zip(range(cfg.train.random_bn_batches), _batches(loader)):
            task.loss(model, batch)
            seen += len(batch[0]) if isinstance(batch, (tuple, list)) else cfg.train.batch_size
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    log.info("random init: batch-norm statistics of %d layers estimated on %d training samples",
             len(norms), seen)
    return seen


def prepare(task, cfg: FinetuneConfig, backbone, meta: dict, world_size: int = 1) -> tuple[Any, Any, dict]:
    """Seed, freeze (by mode), read and check the data, build the task model.

    On more than one rank with ``dist.batchnorm=frozen``, every batch norm of
    the backbone keeps its statistics, as with ``train.bn_stats=frozen``. Returns (model, training set, {test set name: test set}); the cleaned test
    set is present only when ``data.cleaned_test`` is set.
    """
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_set = task.load_train(cfg)
    if len(train_set) == 0:
        raise DataError(f"the {task.name} training set has no usable samples")
    if cfg.init == "random" and cfg.train.random_bn_batches:
        estimate_batchnorm_stats(task, backbone, cfg, train_set, meta)
        torch.manual_seed(cfg.seed)  # the task model's heads start as without the estimate
    # Freeze before the task model wraps the backbone's layers (see fix_batchnorm_stats).
    if cfg.mode == "frozen":
        frozen = freeze_stages(backbone)
        log.info("frozen mode: %d parameters of conv1..conv4 fixed, with their batch-norm statistics", frozen)
    if cfg.train.bn_stats == "frozen" or (world_size > 1 and cfg.dist.batchnorm == "frozen"):
        setting = "bn_stats=frozen" if cfg.train.bn_stats == "frozen" else f"{world_size} ranks, dist.batchnorm=frozen"
        log.info("%s: %d batch norms keep their statistics", setting, fix_batchnorm_stats(backbone))
    tests = {name: task.load_test(cfg, name) for name in TEST_SETS}
    tests = {name: data for name, data in tests.items() if data is not None}
    for data in tests.values():
        task.check_test(train_set, data)
    return task.build_model(backbone, cfg, train_set, meta), train_set, tests


def save_model(out_dir: Path, model, cfg: FinetuneConfig, meta: dict) -> None:
    """``model.pt`` (the task model's state dict) and ``model.json`` (task, arch, image statistics)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        torch.save(state, tmp)
    write_json(out_dir / MODEL_META, {"task": cfg.task, "arch": meta.get("arch", cfg.arch),
                                      **{k: list(meta[k]) for k in ("image_mean", "image_std") if k in meta}})


def train_and_evaluate(task, cfg: FinetuneConfig, backbone, meta: dict, out_dir: Path,
                       progress: dict, pseudo_data: Callable | None = None,
                       world: World = World()) -> tuple[dict, dict, dict]:
    """prepare, train, evaluate every test set, save the model.

    ``pseudo_data(task, cfg, train_set)``: the :class:`PseudoData` to train beside the
    labelled set (self-training), or None. Returns (metrics by test set, skip counts,
    training data facts for metrics.json); on ranks other than 0, which neither
    evaluate nor save, the metrics are {}.
    """
    model, train_set, tests = prepare(task, cfg, backbone, meta, world.size)
    pseudo = pseudo_data(task, cfg, train_set) if pseudo_data is not None else None
    data = {"labelled_fraction": cfg.data.labelled_fraction, "labelled_images": task.train_images(train_set)}
    if pseudo is not None:
        data["pseudo_images"] = len(pseudo.dataset)
    if world.rank:  # the model is set up alike on every rank; the ranks' data draws differ
        torch.manual_seed(cfg.seed * 1_000_003 + world.rank)
        random.seed(cfg.seed * 1_000_003 + world.rank)
        np.random.seed(cfg.seed * 1_000_003 + world.rank)
    sample_log = None
    if cfg.dist.log_samples:
        sample_log = out_dir / "data" / f"samples-rank{world.rank}.txt"
        sample_log.parent.mkdir(exist_ok=True)
        sample_log.unlink(missing_ok=True)
    metrics_log = MetricsLog(out_dir / METRICS_LOG, cfg.logging, out_dir.name, enabled=world.main)
    metrics: dict = {}
    try:
        train(task, distribute(model, cfg, world), train_set, cfg, metrics_log, progress, pseudo, world,
              sample_log)
        if world.main:
            save_model(out_dir, model, cfg, meta)
            cache: dict = {}
            metrics = {name: task.evaluate(model, data, cfg, cache) for name, data in tests.items()}
            flat = {f"{name}/{key}": value for name, values in metrics.items() for key, value in values.items()}
            metrics_log.write({"step": cfg.train.steps, **flat})
    finally:
        metrics_log.close()
    skipped = {"train": dict(train_set.skipped), **{n: dict(d.skipped) for n, d in tests.items()}}
    return metrics, skipped, data


def run_finetune(cfg: FinetuneConfig, out_dir: str | Path, *, force: bool = False, stage: str = "finetune",
                 extra: dict | None = None, extra_inputs: dict | None = None,
                 pseudo_data: Callable | None = None) -> dict:
    """One downstream run into ``out_dir``; returns the content of metrics.json.

    A complete run with the same config and inputs is not repeated. On any
    error, failed.json ({"error", "step"}) is written and the error re-raised.
    ``datascale selftrain`` passes its ``stage``, ``extra`` (config.yaml entries;
    its ``lineage`` mapping updates the run's), ``extra_inputs`` (more hashed
    input files) and ``pseudo_data`` (see :func:`train_and_evaluate`). Under a
    launcher (RANK/WORLD_SIZE set) every rank calls it; rank 0 writes the run
    folder and every rank returns rank 0's metrics.
    """
    out_dir = Path(out_dir)
    task = get_task(cfg.task)
    world = join_world(cfg)
    previous_threads = torch.get_num_threads()
    threads = choose_threads(cfg.train.threads, world.local_size if world.device.type == "cpu" else 1)
    torch.set_num_threads(threads)
    log.info("%s %s: %d CPU threads, rank %d of %d on %s (%s)", cfg.task, cfg.mode, threads, world.rank,
             world.size, world.device, world.precision)
    try:
        backbone, meta = initial_backbone(cfg, task.dilation(cfg))
        check_input_size(cfg, backbone.arch)  # the architecture a backbone.json named
        extra = dict(extra or {})
        lineage = {**run_lineage(cfg, meta), **extra.pop("lineage", {})}
        inputs = {**task.input_files(cfg), **(extra_inputs or {})}
        if lineage["backbone"] is not None:
            inputs["backbone"] = Path(lineage["backbone"])
        record = config_record(stage, cfg, inputs, extra={**extra, "lineage": lineage})
        state = world.share(prepare_output_dir(out_dir, record, force=force) if world.main else None)
        if state == "complete":
            log.info("%s is complete for this config; nothing to do", out_dir)
            return world.share(json.loads((out_dir / METRICS_FILE).read_text(encoding="utf-8"))
                               if world.main else None)
        if world.main:
            for stale in (METRICS_LOG, FAILED_FILE):  # an interrupted run restarts from step 0
                (out_dir / stale).unlink(missing_ok=True)
        progress = {"step": 0}
        started = time.perf_counter()
        try:
            metrics, skipped, data = train_and_evaluate(task, cfg, backbone, meta, out_dir, progress,
                                                        pseudo_data, world)
        except BaseException as exc:
            if world.main:
                write_json(out_dir / FAILED_FILE, {"error": f"{type(exc).__name__}: {exc}",
                                                   "step": progress["step"]})
            raise
        result = {"task": cfg.task, "steps": cfg.train.steps, **data, "metrics": metrics}
        if world.main:
            write_json(out_dir / METRICS_FILE, result)
            mark_complete(out_dir, {"seconds": round(time.perf_counter() - started, 2), "skipped": skipped,
                                    "primary_metric": task.primary_metric, "world_size": world.size,
                                    "threads": threads})
        return world.share(result)  # the other ranks waited here while rank 0 evaluated
    finally:
        torch.set_num_threads(previous_threads)
        world.leave()
