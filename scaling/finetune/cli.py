"""``datascale finetune``: one downstream run (see :mod:`scaling.finetune.loop`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from datascale.cli import add_config_args, add_shortcut, config_from_args, override_value, locks_output, subcommand
from datascale.errors import ConfigError
from datascale.launch import deepspeed_command, launched_by_deepspeed, run_launcher, strip_launch_args
from scaling.tasks import TASKS, check_task
from scaling.tasks.config import FinetuneConfig


def config_from_cli(args: argparse.Namespace) -> FinetuneConfig:
    """The run's config: the YAML file (default ``finetune/<task>``), then flags and ``--set`` in order.

    A backbone file also sets what it implies, before the user's values (which
    win): ``init=pretrained`` when backbone.json is beside it (else
    ``checkpoint``), and the architecture backbone.json names.
    """
    task = override_value(args, "task")
    if task is not None:
        check_task(task)
    source = args.config or (f"finetune/{task}" if task else None)
    if source is None:
        raise ConfigError("say which task: --task detection|segmentation|pose (or --config FILE)")
    implied = []
    backbone = override_value(args, "backbone")
    if backbone:
        from scaling.models.files import backbone_paths  # torch

        described = backbone_paths(backbone)[1].is_file()
        implied.append(f"init={'pretrained' if described else 'checkpoint'}")
        if described:
            implied.append("arch=null")  # the architecture backbone.json names; arch= must match it
    return config_from_args(FinetuneConfig, args, source=source, defaults=implied)


def print_metrics(label: str, result: dict, metrics_file: Path) -> None:
    """One line per test set (``detection frozen [original]: AP=0.1234, ...``), then the file."""
    for test_set, values in result["metrics"].items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items() if "/" not in k)
        print(f"{label} [{test_set}]: {shown}")
    print(f"metrics: {metrics_file}")


def _command(args: argparse.Namespace) -> int:
    cfg = config_from_cli(args)
    if args.nproc > 1 and not launched_by_deepspeed():
        from scaling.finetune.distributed import check_world  # torch

        import torch

        check_world(cfg, args.nproc, torch.cuda.is_available())  # refused before N processes start
        return run_launcher(deepspeed_command(strip_launch_args(args.argv), nproc=args.nproc))
    from scaling.finetune.loop import METRICS_FILE, run_finetune  # torch

    result = run_finetune(cfg, args.out, force=args.force)
    if int(os.environ.get("RANK", 0)) == 0:
        print_metrics(f"{cfg.task} {cfg.mode}", result, Path(args.out) / METRICS_FILE)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``datascale finetune`` (torch is imported only when it runs)."""
    parser = subcommand(subparsers, "finetune", _command,
                        help="fine-tune a backbone on detection, segmentation or pose (frozen or not)",
                        description="Fine-tune a backbone on a downstream task (frozen or fine-tuned) and "
                                    "evaluate it on the original and the de-duplicated test set. Flags are "
                                    "shorthands for --set; of a flag and a --set of one key, the later wins. "
                                    "On N ranks (--nproc N, or `datascale launch finetune`): train.batch_size "
                                    "is the global batch and must divide by N (each rank trains on its "
                                    "disjoint share); dist.lr_scaling=none|linear (train.lr x batch_size / "
                                    "dist.reference_batch); dist.batchnorm=frozen|sync for the batch norms "
                                    "that train.bn_stats=update lets update (fixed ones stay fixed); rank 0 "
                                    "evaluates and writes; dist.log_samples=true logs each rank's samples. "
                                    "train.precision=auto|fp32|bf16|fp16 is the GPU autocast (fp32 on CPU).")
    add_shortcut(parser, "--task", key="task", choices=tuple(TASKS),
                 help="downstream task; its built-in config finetune/TASK is the default --config")
    add_shortcut(parser, "--mode", key="mode", choices=("frozen", "finetune"),
                 help="frozen: conv1..conv4 fixed (the paper); finetune: everything trains; "
                      "batch norm follows train.bn_stats in both")
    add_shortcut(parser, "--backbone", key="backbone", metavar="PATH",
                 help="backbone.pt or its folder from pretraining, or another checkpoint")
    add_shortcut(parser, "--init", key="init", choices=("random", "pretrained", "checkpoint"),
                 help="random: no backbone file; without it, pretrained if backbone.json exists, else checkpoint")
    add_shortcut(parser, "--arch", key="arch", help="backbone architecture (else from backbone.json)")
    add_shortcut(parser, "--data", key="data.root", metavar="DIR", help="dataset folder, e.g. WORLD/detection")
    add_shortcut(parser, "--cleaned-test", key="data.cleaned_test", metavar="FILE",
                 help="de-duplicated test set: COCO JSON or image list")
    add_shortcut(parser, "--steps", key="train.steps", type=int, help="optimizer steps")
    add_shortcut(parser, "--seed", key="seed", type=int, help="random seed")
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel ranks on this machine (DDP, started through the DeepSpeed launcher); "
                             "train.batch_size is the global batch, split over them (dist.* keys)")
    locks_output(parser)
    add_config_args(parser, None, FinetuneConfig)
