"""The one pretraining loop: multi-label ResNet on a subset, under DeepSpeed.

    datascale pretrain --config pretrain/demo --set data.train=SUBSETS/10pct \
        --set data.eval=EVAL_SHARDS --out runs/pretrain/10pct [--nproc 2]

Every subset trains for the same ``schedule.steps`` (rule 3). The run folder
holds config.yaml (lineage), deepspeed.json, metrics.jsonl (loss, lr, images/s,
mAP@100), checkpoints/ (DeepSpeed, last K), and at the end backbone.pt +
backbone.json and metrics.json. Re-running the same command resumes from the
last checkpoint with the same data position, so a run killed at any point
(kill -9 included) ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from datascale.atomic import append_jsonl, write_json
from datascale.errors import DataError, DatascaleError
from datascale.lineage import config_record, is_complete, mark_complete, prepare_output_dir

from scaling.launch import (deepspeed_command, ensure_process_group_env, launched_by_deepspeed,
                            run_launcher, strip_launch_args)

log = logging.getLogger(__name__)


class TrainingDiverged(DatascaleError):
    """The loss became NaN or inf."""


# --------------------------------------------------------------------------- setup


def _resolve_data(cfg):
    """Check the train subset and eval set before anything is built; returns (train, eval, vocab).

    The eval set is read in the train subset's class space: for a
    class-restricted subset its labels are mapped the same way.
    """
    import dataclasses

    from data_tools.subsets import load_subset

    train = load_subset(cfg.data.train)
    if train.images == 0:
        raise DataError(f"{cfg.data.train} holds no images; make the subset again with a larger size")
    if not Path(cfg.data.eval).exists():
        raise DataError(f"eval set not found: {cfg.data.eval} (shard the world's eval/labels.jsonl "
                        "with `datascale shards write` and pass its folder as data.eval)")
    evalset = load_subset(cfg.data.eval)
    if evalset.images == 0:
        raise DataError(f"the eval set {cfg.data.eval} is empty")
    if evalset.source_vocabulary().names != train.source_vocabulary().names:
        raise DataError(f"the eval set {cfg.data.eval} uses other classes than {cfg.data.train}; "
                        "shard both with the same classes.json")
    evalset = dataclasses.replace(evalset, classes=train.classes)
    return train, evalset, train.vocabulary()


def _classes_file(subset) -> Path:
    """The classes the model predicts: a subset's own classes.json, else the shards'."""
    own = Path(subset.path) / "classes.json"
    return (own if own.is_file() else Path(subset.shards_root) / "classes.json").resolve()


def _lineage(cfg, train, vocab, world_size: int) -> dict:
    return {"task": "pretrain", "mode": "pretrain", "arch": cfg.model.arch, "seed": cfg.seed,
            "init": "checkpoint" if cfg.model.init_from else "random",
            "init_from": cfg.model.init_from or None,
            "subset_name": train.name, "subset_images": int(train.images),
            "num_classes": len(vocab), "steps": cfg.schedule.steps,
            "global_batch": cfg.schedule.global_batch, "world_size": world_size}


def _build_model(cfg, num_classes: int, device, channels_last: bool):
    import torch

    from scaling.models import MultiLabelClassifier, build_backbone

    from scaling.backbone_io import load_backbone

    if cfg.model.init_from:
        backbone, _ = load_backbone(cfg.model.init_from, arch=cfg.model.arch)
    else:
        backbone = build_backbone(cfg.model.arch)
    model = MultiLabelClassifier(backbone, num_classes, prior=cfg.model.head_prior).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _optimizer(cfg, model):
    import torch

    o = cfg.optim
    factories = {
        "rmsprop": lambda p: torch.optim.RMSprop(p, lr=o.lr, momentum=o.momentum, eps=o.eps,
                                                 weight_decay=o.weight_decay),
        "sgd": lambda p: torch.optim.SGD(p, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay),
        "adamw": lambda p: torch.optim.AdamW(p, lr=o.lr, weight_decay=o.weight_decay),
    }
    optimizer = factories[o.name](model.parameters())

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        return warm * o.lr_decay ** (step // o.lr_decay_every)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_engine(model, optimizer, scheduler, ds_config: dict, world_size: int):
    """The DeepSpeed engine for ``model``.

    With a single rank and no ZeRO there is nothing to all-reduce, but the
    engine would still flatten, "reduce" and copy back every gradient each
    step; that is switched off (it cost ~10% of a CPU step at demo size).
    """
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    if world_size == 1 and ds_config["zero_optimization"]["stage"] == 0:
        engine.enable_backward_allreduce = False
    return engine


# --------------------------------------------------------------------------- steps


def multilabel_loss(logits, targets, negatives: int, generator):
    """Per-label sigmoid cross-entropy; absent labels are negatives.

    With ``negatives > 0`` only the batch's positive classes plus ``negatives``
    sampled other classes are scored (same classes for the whole batch).
    """
    import torch
    from torch.nn import functional as F

    if negatives and negatives + 1 < logits.shape[1]:
        positive = targets.amax(dim=0) > 0
        scores = torch.rand(logits.shape[1], generator=generator).masked_fill(positive.cpu(), 2.0)
        keep = scores.topk(int(positive.sum().item()) + negatives).indices.to(logits.device)
        logits, targets = logits[:, keep], targets[:, keep]
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum") / logits.shape[0]


def evaluate(model, cfg, evalset, num_classes: int, device) -> dict:
    """mAP@k of ``model`` on the eval set (every image once, no augmentation)."""
    import torch

    from data_tools.loader import make_eval_loader
    from scaling.monitor import TopKAccumulator

    acc = TopKAccumulator(num_classes, k=cfg.monitor.top_k)
    was_training = model.training
    model.eval()
    # Rank 0 evaluates alone: it must read every eval shard, not its rank's share.
    loader = make_eval_loader(evalset, cfg.data.loader, num_classes=num_classes, rank=0, world_size=1)
    with torch.no_grad():
        for batch in loader:
            dtype = next(model.parameters()).dtype  # bf16/fp16 under DeepSpeed on a GPU
            images, label_lists = batch.images.to(device, dtype=dtype), batch.label_lists
            acc.add(model(images).float().cpu().numpy(), label_lists)
            if cfg.monitor.max_images and acc.images >= cfg.monitor.max_images:
                break
    model.train(was_training)
    return acc.compute(cfg.monitor.weighting)


# --------------------------------------------------------------------------- loop


class _Metrics:
    """metrics.jsonl writer on rank 0; on resume, drops lines past the checkpoint."""

    def __init__(self, path: Path, rank: int, resume_step: int):
        self.path, self.rank = path, rank
        if rank == 0 and path.is_file():
            kept = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= resume_step]
            path.write_text("".join(l + "\n" for l in kept))

    def write(self, record: dict) -> None:
        if self.rank == 0:
            append_jsonl(self.path, record)


@dataclass
class _Run:
    """One rank's view of a run, resolved before training starts."""

    train_set: object
    evalset: object
    vocab: object
    world_size: int
    rank: int
    cuda: bool
    precision: str
    ds_config: dict
    device: object
    model: object


def _start(cfg, out: Path, force: bool) -> tuple[_Run, dict | None]:
    """Check everything, build the model, write lineage, join the process group.

    Returns the run and, when ``out`` is already complete, its final metrics.
    Everything a user can get wrong is checked before any process group,
    output folder or training state exists.
    """
    import torch
    import torch.distributed as dist

    from scaling.pretrain_config import deepspeed_json, resolve_precision

    train_set, evalset, vocab = _resolve_data(cfg)
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    cfg.data.loader.batch_size = cfg.deepspeed.micro_batch
    cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg, cuda, cuda and torch.cuda.is_bf16_supported())
    ds_config = deepspeed_json(cfg, world_size, precision)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    model = _build_model(cfg, len(vocab), device, channels_last=cuda and cfg.model.channels_last)
    run = _Run(train_set, evalset, vocab, world_size, rank, cuda, precision, ds_config, device, model)
    if rank == 0:
        record = config_record("pretrain", cfg, {"train_manifest": Path(train_set.path) / "manifest.parquet",
                                                 "eval_manifest": Path(evalset.path) / "manifest.parquet"},
                               extra={"lineage": _lineage(cfg, train_set, vocab, world_size)})
        if prepare_output_dir(out, record, force=force) == "complete" and world_size == 1:
            log.info("%s is complete for this config: nothing to do", out)
            return run, json.loads((out / "metrics.json").read_text())
        write_json(out / "deepspeed.json", ds_config)
    import deepspeed  # after the checks: a finished run costs no DeepSpeed start-up

    ensure_process_group_env()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    dist.barrier()
    finished = json.loads((out / "metrics.json").read_text()) if is_complete(out) else None
    return run, finished


def train(cfg, out: Path, progress: bool = True, force: bool = False) -> dict:
    """Run (or resume) a pretraining run into ``out``; returns the final metrics.

    Must run in every rank's process (the launcher starts them). Memory: the
    model, optimizer state and one batch per rank; the data is streamed.
    """
    import torch
    from tqdm import tqdm

    from data_tools.loader import make_train_loader
    from scaling import checkpoint as ckpt

    run, finished = _start(cfg, out, force)
    if finished is not None:
        return finished
    rank, world_size, vocab = run.rank, run.world_size, run.vocab
    optimizer, scheduler = _optimizer(cfg, run.model)
    engine = build_engine(run.model, optimizer, scheduler, run.ds_config, world_size)
    ckpt_dir = out / "checkpoints"
    position = ckpt.resume(engine, ckpt_dir, rank) or ckpt.DataPosition()
    metrics = _Metrics(out / "metrics.jsonl", rank, position.step)
    key_log = (out / "data" / f"keys-rank{rank}.txt") if cfg.data.log_keys else None
    if key_log:
        _truncate_key_log(key_log, position.step)

    loader = make_train_loader(run.train_set, cfg.data.loader, num_classes=len(vocab),
                               epoch=position.epoch, samples_seen=position.samples_seen,
                               rank=rank, world_size=world_size)
    bar = tqdm(total=cfg.schedule.steps, initial=position.step, desc=f"pretrain {run.train_set.name}",
               disable=not progress or rank != 0, unit="step")
    state = _LoopState(ckpt.latest_tag(ckpt_dir))
    step_batch = _MicroStep(cfg, run, engine, out, key_log, torch.Generator())
    # Checkpoints are taken at optimizer-step boundaries, so a resumed run starts on one.
    accum, micro_steps = run.ds_config["gradient_accumulation_steps"], 0
    while position.step < cfg.schedule.steps:
        for batch in loader:  # the rest of this epoch; the loader then moves to the next
            step_batch(batch, position.step, state)
            micro_steps += 1
            if micro_steps % accum:
                continue
            position.step += 1
            position.epoch, position.samples_seen = loader.epoch, loader.samples_seen
            bar.update(1)
            _after_step(engine, cfg, position, state, scheduler, metrics, run.evalset, vocab,
                        run.device, rank, ckpt_dir, out, bar)
            if position.step >= cfg.schedule.steps:
                break
        if loader.skipped:
            log.warning("rank %d skipped corrupt or missing samples: %s", rank, dict(loader.skipped))
    bar.close()
    return _finish(engine, cfg, out, rank, state.last_tag, run.train_set, run.evalset, vocab,
                   world_size, state.result)


class _MicroStep:
    """Forward, backward and DeepSpeed step on one micro-batch (+ the key log)."""

    def __init__(self, cfg, run: _Run, engine, out: Path, key_log: Path | None, generator) -> None:
        import torch
        self.cfg, self.run, self.engine, self.out = cfg, run, engine, out
        self.key_log, self.generator = key_log, generator
        # With bf16/fp16 DeepSpeed casts the module, so the inputs must follow.
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision, torch.float32)
        self.channels_last = run.cuda and cfg.model.channels_last

    def __call__(self, batch, step: int, state: "_LoopState") -> None:
        import torch
        cfg, run, engine = self.cfg, self.run, self.engine
        images = batch.images.to(run.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.generator.manual_seed(cfg.seed * 1_000_003 + step)  # same negatives on resume
        if len(images):
            loss = multilabel_loss(engine(images), batch.targets.to(run.device).to_dense(),
                                   cfg.loss.negatives_per_step, self.generator)
        else:  # every sample of this batch was corrupt (counted by the loader): a zero step
            loss = sum(p.sum() for p in engine.module.parameters()) * 0.0
        _check_finite(loss, step, state.last_tag, self.out, run.rank)
        engine.backward(loss)
        engine.step()
        state.images += len(images) * run.world_size
        state.losses.append(loss.item())
        if self.key_log:
            with open(self.key_log, "a") as handle:
                handle.write("".join(f"{step}\t{k}\n" for k in batch.keys))


class _LoopState:
    """What the loop carries between steps: the metrics window and the last checkpoint."""

    def __init__(self, last_tag):
        self.last_tag, self.result = last_tag, {}
        self.tick, self.images, self.losses = time.time(), 0, []


def _after_step(engine, cfg, position, state, scheduler, metrics, evalset, vocab, device, rank,
                ckpt_dir, out, bar) -> None:
    """Log, evaluate and checkpoint on their schedules after optimizer step ``position.step``."""
    from scaling import checkpoint as ckpt

    step, last = position.step, position.step == cfg.schedule.steps
    if step % cfg.schedule.log_every == 0 or last:
        import torch
        import torch.distributed as dist

        elapsed = max(time.time() - state.tick, 1e-9)
        window = torch.tensor([sum(state.losses), float(len(state.losses))], dtype=torch.float64)
        dist.all_reduce(window)  # the loss over every rank's batches, not rank 0's alone
        record = {"step": step, "loss": (window[0] / window[1]).item(),
                  "lr": scheduler.get_last_lr()[0], "images_per_s": state.images / elapsed,
                  "epoch": position.epoch}
        metrics.write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        state.tick, state.images, state.losses = time.time(), 0, []
    if step % cfg.schedule.eval_every == 0 or last:
        state.result = _eval_on_rank0(engine.module, cfg, evalset, len(vocab), device, rank, step, metrics)
    if step % cfg.schedule.checkpoint_every == 0 or last:
        state.last_tag = ckpt.save(engine, ckpt_dir, position, rank, cfg.schedule.keep_checkpoints)


def _truncate_key_log(path: Path, resume_step: int) -> None:
    """Drop key-log lines of steps after the checkpoint (they will be trained again)."""
    path.parent.mkdir(exist_ok=True)
    if path.is_file():
        kept = [l for l in path.read_text().splitlines() if int(l.split("\t", 1)[0]) < resume_step]
        path.write_text("".join(l + "\n" for l in kept))


def _check_finite(loss, step: int, last_tag, out: Path, rank: int) -> None:
    import torch
    import torch.distributed as dist

    bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0])
    dist.all_reduce(bad)  # every rank stops together
    if bad.item():
        message = (f"the loss became {loss.item()} at step {step + 1}; stopping. The last good "
                   f"checkpoint is {out / 'checkpoints' / last_tag if last_tag else 'none (none saved yet)'}. "
                   "Lower optim.lr, enable deepspeed.grad_clip, or check the data.")
        if rank == 0:
            write_json(out / "failed.json", {"error": message, "step": step + 1})
        raise TrainingDiverged(message)


def _eval_on_rank0(model, cfg, evalset, num_classes, device, rank, step, metrics) -> dict:
    import torch.distributed as dist

    result = {}
    if rank == 0:
        result = evaluate(model, cfg, evalset, num_classes, device)
        metrics.write({"step": step, **result})
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    dist.barrier()
    return result


def _finish(engine, cfg, out, rank, tag, train_set, evalset, vocab, world_size, result) -> dict:
    import torch.distributed as dist

    from scaling import checkpoint as ckpt
    from scaling.models import MultiLabelClassifier, build_backbone
    from scaling.backbone_io import save_backbone

    final = {}
    if rank == 0:
        state = ckpt.fp32_state_dict(engine, out / "checkpoints", tag, cfg.deepspeed.zero_stage)
        model = MultiLabelClassifier(build_backbone(cfg.model.arch), len(vocab), prior=cfg.model.head_prior)
        model.load_state_dict(state)
        lineage = {**_lineage(cfg, train_set, vocab, world_size), "pretrain_run": str(out.resolve())}
        save_backbone(model, out / "backbone.pt",
                      {"num_classes": len(vocab), "classes_file": str(_classes_file(train_set)),
                       "lineage": lineage})
        if not result:  # resumed after the last checkpoint, before the export
            result = evaluate(engine.module, cfg, evalset, len(vocab), engine.device)
        key = f"mAP@{cfg.monitor.top_k}"
        final = {"task": "pretrain", "steps": cfg.schedule.steps, "metrics": {"eval": {key: result[key]}},
                 "eval_classes": result["eval_classes"], "eval_images": result["eval_images"]}
        write_json(out / "metrics.json", final)
        mark_complete(out, {"steps": cfg.schedule.steps})
    dist.barrier()
    return final


# --------------------------------------------------------------------------- CLI


def register_cli(subparsers) -> None:
    from scaling.cli import add_config_args, subcommand

    parser = subcommand(
        subparsers, "pretrain", _main,
        help="multi-label pretraining of a ResNet on one subset, under DeepSpeed",
        description=__doc__ + "\nEvery key is documented in configs/pretrain/demo.yaml.")
    add_config_args(parser, "pretrain/demo")
    parser.add_argument("--out", required=True, help="run folder (resumed if it exists with the same config)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="ranks on this machine, started through the DeepSpeed launcher")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _main(args: argparse.Namespace) -> int:
    from scaling.cli import config_from_args
    from scaling.pretrain_config import PretrainConfig

    cfg = config_from_args(PretrainConfig, args)
    if args.nproc > 1 and not launched_by_deepspeed():
        _resolve_data(cfg)  # bad paths fail here, before N processes start
        argv = strip_launch_args(args.argv)
        return run_launcher(deepspeed_command(argv, nproc=args.nproc))
    train(cfg, Path(args.out), progress=not args.no_progress, force=args.force)
    return 0
