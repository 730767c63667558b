"""The one pretraining loop: multi-label ResNet on a subset, under DeepSpeed.

    datascale pretrain --config pretrain/demo --set data.train=SUBSETS/10pct \\
        --set data.eval=EVAL_SHARDS --out runs/pretrain/10pct [--nproc 2]

Every subset trains for the same ``schedule.steps`` (rule 3). The run folder holds config.yaml
(lineage), deepspeed.json, metrics.jsonl (loss, lr, images/s, mAP@100), checkpoints/ (DeepSpeed,
last K), and at the end backbone.pt + backbone.json and metrics.json. Re-running the same command resumes from the
last checkpoint with the same data position, so a run killed at any point
(kill -9 included) ends with the same weights as an uninterrupted one.

:func:`train` reads top to bottom: set up the run (:func:`start_run`), then
one loop of micro-batches with logging, evaluation and checkpoints on their
schedules, then the export (:func:`finish_run`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from datascale.atomic import write_json
from datascale.errors import DataError, DatascaleError
from datascale.launch import ensure_process_group_env
from datascale.lineage import config_record, is_complete, mark_complete, prepare_output_dir
from datascale.metrics_log import MetricsLog
from data_tools.loader.pipeline import make_eval_loader, make_train_loader
from data_tools.loader.transforms import model_input
from data_tools.subsets.subset import load_subset
from scaling.models.backbones import MultiLabelClassifier, build_backbone
from scaling.models.files import load_backbone, save_backbone
from scaling.pretrain import checkpoint as ckpt
from scaling.pretrain.config import (PretrainConfig, budget_label, curriculum_schedule, deepspeed_json,
                                     resolve_precision, resolve_schedule)
from scaling.pretrain.budget import evaluations, training_budget
from scaling.pretrain.map_metric import TopKAccumulator

log = logging.getLogger(__name__)


class TrainingDiverged(DatascaleError):
    """The loss became NaN or inf."""


# --------------------------------------------------------------------------- data and model


def resolve_data(cfg: PretrainConfig):
    """Check the train subset and eval set before anything is built; returns (train, eval, vocab).

    The eval set is read in the train subset's class space: for a
    class-restricted subset its labels are mapped the same way.
    """
    train = load_subset(cfg.data.train)
    if train.images == 0:
        raise DataError(f"{cfg.data.train} holds no images; make the subset again with a larger size")
    if not Path(cfg.data.eval).exists():
        raise DataError(f"eval set not found: {cfg.data.eval} (shard the world's eval/labels.jsonl "
                        "with `datascale shards write` and pass its folder as data.eval)")
    evalset = load_subset(cfg.data.eval)
    if evalset.images == 0:
        raise DataError(f"the eval set {cfg.data.eval} is empty")
    for subset, what in ((train, "train subset"), (evalset, "eval set")):
        _check_shard_files(subset, what)
    if evalset.source_vocabulary().names != train.source_vocabulary().names:
        raise DataError(f"the eval set {cfg.data.eval} uses other classes than {cfg.data.train}; "
                        "shard both with the same classes.json")
    # Every eval image stays: one with none of a class-restricted subset's classes is a
    # negative for each of them (dropping it would flatter mAP and leave the shard counts short).
    evalset = dataclasses.replace(evalset, classes=train.classes, keep_unlabelled=True)
    return train, evalset, train.vocabulary()


def _check_shard_files(subset, what: str) -> None:
    """Every shard of ``subset`` is a non-empty file: found before training, not at the first eval."""
    bad = [p for p in subset.shard_paths() if not p.is_file() or p.stat().st_size == 0]
    if bad:
        raise DataError(f"the {what} {subset.path} lacks {len(bad)} of its {len(subset.shards)} shards "
                        f"({', '.join(str(p) for p in bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                        "write the shards again (`datascale shards write`) or check the path")


def _classes_file(subset) -> Path:
    """The classes the model predicts: a subset's own classes.json, else the shards'."""
    own = Path(subset.path) / "classes.json"
    return (own if own.is_file() else Path(subset.shards_root) / "classes.json").resolve()


def run_lineage(cfg: PretrainConfig, train, vocab, world_size: int) -> dict:
    """The study columns of this run (results rows and backbone.json carry them)."""
    return {"task": "pretrain", "mode": "pretrain", "arch": cfg.model.arch, "seed": cfg.seed,
            "init": "checkpoint" if cfg.model.init_from else "random",
            "init_from": cfg.model.init_from or None,
            "subset_name": train.name, "subset_images": int(train.images),
            "num_classes": len(vocab), "steps": cfg.schedule.steps,
            "global_batch": cfg.schedule.global_batch, "world_size": world_size,
            # The study's axes (scaling.study): budget, class restriction, pretraining seed.
            "budget": budget_label(cfg), "classes": f"{len(train.classes)} classes" if train.classes else "all",
            "pretrain_seed": cfg.seed, "curriculum": cfg.curriculum.name}


def build_model(cfg: PretrainConfig, num_classes: int, device, channels_last: bool):
    """The classifier: a fresh backbone, or ``model.init_from``'s weights, plus a new head."""
    if cfg.model.init_from:
        backbone, _ = load_backbone(cfg.model.init_from, arch=cfg.model.arch)
    else:
        backbone = build_backbone(cfg.model.arch)
    model = MultiLabelClassifier(backbone, num_classes, prior=cfg.model.head_prior).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(cfg: PretrainConfig, model):
    """The optimizer and its schedule: linear warm-up, then step decay or a cosine to zero."""
    o = cfg.optim
    factories = {
        "rmsprop": lambda p: torch.optim.RMSprop(p, lr=o.lr, momentum=o.momentum, eps=o.eps,
                                                 weight_decay=o.weight_decay),
        "sgd": lambda p: torch.optim.SGD(p, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay),
        "adamw": lambda p: torch.optim.AdamW(p, lr=o.lr, weight_decay=o.weight_decay),
    }
    optimizer = factories[o.name](model.parameters())
    total = max(1, cfg.schedule.steps)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        if o.lr_schedule == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        return warm * o.lr_decay ** (step // o.lr_decay_every)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_engine(model, optimizer, scheduler, ds_config: dict, world_size: int):
    """The DeepSpeed engine for ``model``.

    With a single rank and no ZeRO there is nothing to all-reduce, but the
    engine would still flatten, "reduce" and copy back every gradient each
    step; that is switched off (it cost ~10% of a CPU step at demo size).
    """
    import deepspeed  # seconds to import: only once the run is known to train

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    if world_size == 1 and ds_config["zero_optimization"]["stage"] == 0:
        engine.enable_backward_allreduce = False
    return engine


def multilabel_loss(logits, targets, negatives: int, generator):
    """Per-label sigmoid cross-entropy; absent labels are negatives.

    With ``negatives > 0`` only the batch's positive classes plus ``negatives``
    sampled other classes are scored (same classes for the whole batch).
    """
    if negatives and negatives + 1 < logits.shape[1]:
        positive = targets.amax(dim=0) > 0
        scores = torch.rand(logits.shape[1], generator=generator).masked_fill(positive.cpu(), 2.0)
        keep = scores.topk(int(positive.sum().item()) + negatives).indices.to(logits.device)
        logits, targets = logits[:, keep], targets[:, keep]
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum") / logits.shape[0]


def evaluate(model, cfg: PretrainConfig, evalset, num_classes: int, device) -> dict:
    """mAP@k of ``model`` on the eval set (every image once, no augmentation): over the
    eval set's annotated classes (``mAP@k``) and over every level (``mAP@k_all_levels``)."""
    acc = TopKAccumulator(num_classes, k=cfg.monitor.top_k)
    was_training = model.training
    model.eval()
    # Rank 0 evaluates alone: it must read every eval shard, not its rank's share.
    loader = make_eval_loader(evalset, loader_config(cfg), num_classes=num_classes, rank=0, world_size=1)
    with torch.no_grad():
        for batch in loader:
            dtype = next(model.parameters()).dtype  # bf16/fp16 under DeepSpeed on a GPU
            images, label_lists = model_input(batch.images, device, dtype), batch.label_lists
            acc.add(model(images).float().cpu().numpy(), label_lists)
            if cfg.monitor.max_images and acc.images >= cfg.monitor.max_images:
                break
    model.train(was_training)
    return acc.compute(cfg.monitor.weighting, annotated=evalset.annotated_classes())


def loader_config(cfg: PretrainConfig):
    """The loader settings with the batch DeepSpeed feeds per rank (``deepspeed.micro_batch``)."""
    return dataclasses.replace(cfg.data.loader, batch_size=cfg.deepspeed.micro_batch)


# --------------------------------------------------------------------------- the run


@dataclass
class RunContext:
    """One rank's view of a run, fixed before training starts."""

    cfg: PretrainConfig
    out: Path
    train_set: object
    evalset: object
    vocab: object
    rank: int
    world_size: int
    device: object
    precision: str
    ds_config: dict
    channels_last: bool
    model: object = None             # built (and an init_from checkpoint checked) before any process group
    finished: dict | None = None     # metrics.json of a run that is already complete
    metrics: MetricsLog | None = None  # metrics.jsonl (+ TensorBoard / W&B), written by rank 0
    notes: dict = field(default_factory=dict)  # step reached, checkpoints skipped on resume

    @property
    def input_dtype(self):
        # With bf16/fp16 DeepSpeed casts the module, so the inputs must follow.
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def log_metrics(self, record: dict) -> None:
        if self.metrics is None:
            self.metrics = MetricsLog(self.out / "metrics.jsonl", self.cfg.logging, self.train_set.name,
                                      enabled=self.rank == 0)
        self.metrics.write(record)


@dataclass
class _Window:
    """Loss and throughput since the last log line."""

    tick: float = field(default_factory=time.time)
    images: int = 0
    losses: list = field(default_factory=list)
    side: int = 0   # the input side of the last batch (changes with a curriculum's stages)

    def record(self, step: int, lr: float, epoch: int) -> dict:
        window = torch.tensor([sum(self.losses), float(len(self.losses))], dtype=torch.float64)
        dist.all_reduce(window)  # the loss over every rank's batches, not rank 0's alone
        record = {"step": step, "loss": (window[0] / window[1]).item(), "lr": lr,
                  "images_per_s": self.images / max(time.time() - self.tick, 1e-9), "epoch": epoch,
                  "input_size": self.side}
        self.tick, self.images, self.losses = time.time(), 0, []
        return record


def start_run(cfg: PretrainConfig, out: Path, force: bool) -> RunContext:
    """Check everything, build the model, write lineage, join the process group.

    Everything a user can get wrong is checked before any process group,
    output folder or training state exists. ``finished`` is set when ``out``
    already holds this run complete.
    """
    train_set, evalset, vocab = resolve_data(cfg)
    cfg = resolve_schedule(cfg, train_set.images)
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg, cuda, cuda and torch.cuda.is_bf16_supported())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    run = RunContext(cfg, out, train_set, evalset, vocab, rank, world_size, device, precision,
                     deepspeed_json(cfg, world_size, precision), cuda and cfg.model.channels_last)
    torch.manual_seed(cfg.seed)
    run.model = build_model(cfg, len(vocab), device, run.channels_last)  # a mismatched init_from fails here
    if rank == 0:
        record = config_record("pretrain", cfg, {"train_manifest": Path(train_set.path) / "manifest.parquet",
                                                 "eval_manifest": Path(evalset.path) / "manifest.parquet"},
                               extra={"lineage": run_lineage(cfg, train_set, vocab, world_size)})
        if prepare_output_dir(out, record, force=force) == "complete" and world_size == 1:
            log.info("%s is complete for this config: nothing to do", out)
            run.finished = json.loads((out / "metrics.json").read_text())
            return run
        write_json(out / "deepspeed.json", run.ds_config)
        (out / "failed.json").unlink(missing_ok=True)  # this attempt's outcome replaces the last one's
    import deepspeed  # after the checks: a finished run costs no DeepSpeed start-up

    ensure_process_group_env()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    dist.barrier()
    if is_complete(out):
        run.finished = json.loads((out / "metrics.json").read_text())
    return run


def train(cfg: PretrainConfig, out: Path, progress: bool = True, force: bool = False) -> dict:
    """Run (or resume) a pretraining run into ``out``; returns the final metrics.

    Must run in every rank's process (the launcher starts them). Memory: the
    model, optimizer state and one batch per rank; the data is streamed.
    """
    run = start_run(cfg, out, force)
    if run.finished is not None:
        return run.finished
    try:
        return _train(run, progress)
    except TrainingDiverged:
        raise  # wrote failed.json itself
    except BaseException as exc:
        if run.rank == 0 and (out / "config.yaml").is_file():
            write_json(out / "failed.json", {"error": f"{type(exc).__name__}: {exc}",
                                             "step": run.notes.get("step", 0)})
        raise


def _train(run: RunContext, progress: bool) -> dict:
    """The loop of :func:`train` on a started run."""
    cfg, out = run.cfg, run.out  # a "same epochs" budget is resolved to this subset's steps
    optimizer, scheduler = build_optimizer(cfg, run.model)
    engine = build_engine(run.model, optimizer, scheduler, run.ds_config, run.world_size)
    ckpt_dir = out / "checkpoints"
    resumed = ckpt.resume(engine, ckpt_dir, run.rank, run.world_size)
    position = resumed.position if resumed else ckpt.DataPosition()
    run.notes["skipped_checkpoints"] = resumed.skipped if resumed else {}
    _truncate_logs(run, position.step)
    curriculum = curriculum_schedule(cfg, run.ds_config)
    if curriculum is not None and run.rank == 0:
        log.info("curriculum %s", curriculum.describe())
    loader = make_train_loader(run.train_set, loader_config(cfg), num_classes=len(run.vocab),
                               epoch=position.epoch, samples_seen=position.samples_seen,
                               rank=run.rank, world_size=run.world_size, curriculum=curriculum)
    bar = tqdm(total=cfg.schedule.steps, initial=position.step, desc=f"pretrain {run.train_set.name}",
               disable=not progress or run.rank != 0, unit="step")
    last_tag, result, window = (resumed.tag if resumed else None), {}, _Window()
    generator = torch.Generator()
    # Checkpoints are taken at optimizer-step boundaries, so a resumed run starts on one.
    accum, micro_steps = run.ds_config["gradient_accumulation_steps"], 0
    while position.step < cfg.schedule.steps:
        for batch in loader:  # the rest of this epoch; the loader then moves to the next
            images = model_input(batch.images, run.device, run.input_dtype, non_blocking=True)
            if run.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            generator.manual_seed(cfg.seed * 1_000_003 + position.step)  # same negatives on resume
            if len(images):
                loss = multilabel_loss(engine(images), batch.targets.to(run.device).to_dense(),
                                       cfg.loss.negatives_per_step, generator)
            else:  # every sample of this batch was corrupt (counted by the loader): a zero step
                loss = sum(p.sum() for p in engine.module.parameters()) * 0.0
            _check_finite(run, loss, position.step, last_tag)
            engine.backward(loss)
            engine.step()
            window.images += len(images) * run.world_size
            window.side = images.shape[-1]
            window.losses.append(loss.item())
            _log_keys(run, position.step, batch.keys)
            micro_steps += 1
            if micro_steps % accum:
                continue
            position.step += 1
            position.epoch, position.samples_seen = loader.epoch, loader.samples_seen
            run.notes["step"] = position.step
            bar.update(1)
            step, last = position.step, position.step == cfg.schedule.steps
            if step % cfg.schedule.log_every == 0 or last:
                record = window.record(step, scheduler.get_last_lr()[0], position.epoch)
                run.log_metrics(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if step % cfg.schedule.eval_every == 0 or last:
                result = _evaluate_on_rank0(run, engine.module, step)
            if step % cfg.schedule.checkpoint_every == 0 or last:
                last_tag = ckpt.save(engine, ckpt_dir, position, run.rank, cfg.schedule.keep_checkpoints,
                                     run.world_size)
            if last:
                break
        if loader.skipped:
            log.warning("rank %d skipped corrupt or missing samples: %s", run.rank, dict(loader.skipped))
    bar.close()
    return finish_run(run, engine, last_tag, result)


def _truncate_logs(run: RunContext, resume_step: int) -> None:
    """On resume, drop metrics and key-log lines of steps after the checkpoint (they run again)."""
    metrics = run.out / "metrics.jsonl"
    if run.rank == 0 and metrics.is_file():
        kept = [l for l in metrics.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= resume_step]
        metrics.write_text("".join(l + "\n" for l in kept))
    key_log = _key_log(run)
    if key_log:
        key_log.parent.mkdir(exist_ok=True)
        if key_log.is_file():
            kept = [l for l in key_log.read_text().splitlines() if int(l.split("\t", 1)[0]) < resume_step]
            key_log.write_text("".join(l + "\n" for l in kept))


def _key_log(run: RunContext) -> Path | None:
    return run.out / "data" / f"keys-rank{run.rank}.txt" if run.cfg.data.log_keys else None


def _log_keys(run: RunContext, step: int, keys: list) -> None:
    key_log = _key_log(run)
    if key_log:
        with open(key_log, "a") as handle:
            handle.write("".join(f"{step}\t{k}\n" for k in keys))


def _check_finite(run: RunContext, loss, step: int, last_tag: str | None) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0])
    dist.all_reduce(bad)  # every rank stops together
    if bad.item():
        where = run.out / "checkpoints" / last_tag if last_tag else "none (none saved yet)"
        message = (f"the loss became {loss.item()} at step {step + 1}; stopping. The last good "
                   f"checkpoint is {where}. Lower optim.lr, enable deepspeed.grad_clip, or check the data.")
        if run.rank == 0:
            write_json(run.out / "failed.json", {"error": message, "step": step + 1})
        raise TrainingDiverged(message)


def _evaluate_on_rank0(run: RunContext, model, step: int) -> dict:
    result = {}
    if run.rank == 0:
        result = evaluate(model, run.cfg, run.evalset, len(run.vocab), run.device)
        run.log_metrics({"step": step, **result})
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    dist.barrier()
    return result


def finish_run(run: RunContext, engine, tag: str | None, result: dict) -> dict:
    """Export backbone.pt (fp32, gathered from ZeRO partitions), metrics.json and complete.json."""
    cfg, out, final = run.cfg, run.out, {}
    if run.rank == 0:
        state = ckpt.fp32_state_dict(engine, out / "checkpoints", tag, cfg.deepspeed.zero_stage)
        model = MultiLabelClassifier(build_backbone(cfg.model.arch), len(run.vocab), prior=cfg.model.head_prior)
        model.load_state_dict(state)
        if not result:  # resumed after the last checkpoint, before the export
            result = evaluate(engine.module, cfg, run.evalset, len(run.vocab), engine.device)
            run.log_metrics({"step": cfg.schedule.steps, **result})
        key = f"mAP@{cfg.monitor.top_k}"
        budget = training_budget(cfg, run.train_set.images, evaluations(out, key))
        lineage = {**run_lineage(cfg, run.train_set, run.vocab, run.world_size),
                   "pretrain_run": str(out.resolve()), **{f"pretrain_{k}": v for k, v in budget.items()}}
        save_backbone(model, out / "backbone.pt",
                      {"num_classes": len(run.vocab), "classes_file": str(_classes_file(run.train_set)),
                       "lineage": lineage})
        final = {"task": "pretrain", "steps": cfg.schedule.steps,
                 "metrics": {"eval": {key: result[key], f"{key}_all_levels": result[f"{key}_all_levels"]}},
                 "eval_classes": result["eval_classes"], "eval_images": result["eval_images"],
                 "budget": budget}
        write_json(out / "metrics.json", final)
        mark_complete(out, {"steps": cfg.schedule.steps, "primary_metric": key, "threads": torch.get_num_threads(),
                            "skipped_checkpoints": run.notes.get("skipped_checkpoints", {})})
        if run.metrics is not None:
            run.metrics.close()
    dist.barrier()
    return final
