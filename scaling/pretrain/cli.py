"""``datascale pretrain``: multi-label pretraining on one subset (see :mod:`scaling.pretrain.loop`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from datascale.cli import add_config_args, config_from_args, locks_output, subcommand
from datascale.launch import deepspeed_command, launched_by_deepspeed, run_launcher, strip_launch_args
from scaling.pretrain.config import PretrainConfig, grad_accumulation

DESCRIPTION = """\
Multi-label pretraining of a ResNet on one subset, under DeepSpeed.

    datascale pretrain --config pretrain/demo --set data.train=SUBSETS/10pct \\
        --set data.eval=EVAL_SHARDS --out runs/pretrain/10pct [--nproc 2]

The run folder holds config.yaml (lineage), deepspeed.json, metrics.jsonl,
checkpoints/ and at the end backbone.pt + backbone.json and metrics.json.
Re-running the same command resumes from the last checkpoint with the same
data position. Every key is documented in configs/pretrain/demo.yaml.
"""


def register_cli(subparsers) -> None:
    parser = subcommand(subparsers, "pretrain", _main,
                        help="multi-label pretraining of a ResNet on one subset, under DeepSpeed",
                        description=DESCRIPTION)
    add_config_args(parser, "pretrain/demo", PretrainConfig)
    parser.add_argument("--out", required=True, help="run folder (resumed if it exists with the same config)")
    locks_output(parser)
    parser.add_argument("--nproc", type=int, default=1,
                        help="ranks on this machine, started through the DeepSpeed launcher")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _main(args: argparse.Namespace) -> int:
    from scaling.pretrain.loop import resolve_data, train  # torch, DeepSpeed

    cfg = config_from_args(PretrainConfig, args)
    if args.nproc > 1 and not launched_by_deepspeed():
        grad_accumulation(cfg, args.nproc)  # a global batch that does not divide fails here,
        resolve_data(cfg)                   # and so do bad paths, before N processes start
        return run_launcher(deepspeed_command(strip_launch_args(args.argv), nproc=args.nproc))
    train(cfg, Path(args.out), progress=not args.no_progress, force=args.force)
    return 0
