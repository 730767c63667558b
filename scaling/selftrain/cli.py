"""``datascale selftrain``: pseudo-label unlabelled images with a teacher run, train a student.

See :mod:`scaling.selftrain.run`. The student's fine-tuning config starts as
the teacher's (its config.yaml), then ``configs/selftrain/TASK.yaml`` (or
``--config``), then flags and ``--set`` in command-line order.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from datascale.cli import add_config_args, add_shortcut, config_from_args, locks_output, override_value, subcommand
from datascale.config import read_yaml, resolve_config_path
from datascale.errors import ConfigError, DataError
from datascale.lineage import read_config_record
from scaling.selftrain.config import SelftrainConfig
from scaling.tasks import TASKS, check_task


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_from_cli(args: argparse.Namespace) -> SelftrainConfig:
    """The teacher's recorded fine-tuning config under ``finetune:``, the YAML file over it, then flags."""
    task = override_value(args, "task")
    if task is not None:
        check_task(task)
    source = args.config or (f"selftrain/{task}" if task else None)
    if source is None:
        raise ConfigError("say which task: --task detection|segmentation|pose (or --config FILE)")
    data = read_yaml(resolve_config_path(source))
    teacher = override_value(args, "teacher") or data.get("teacher")
    if teacher:
        record = read_config_record(teacher)
        if record is None or "config" not in record:
            raise DataError(f"{teacher}: no config.yaml; --teacher takes a `datascale finetune` run folder")
        data["finetune"] = _merge(record["config"], data.get("finetune") or {})
    return config_from_args(SelftrainConfig, args, source=data)


def _command(args: argparse.Namespace) -> int:
    from datascale.launch import rank_from_env
    from scaling.finetune.cli import print_metrics
    from scaling.selftrain.run import STUDENT_DIR, run_selftrain  # torch

    cfg = config_from_cli(args)
    rank, world_size = rank_from_env(args.rank, args.world_size)
    if world_size > 1 and args.step != "pseudo":
        raise ConfigError(f"{world_size} ranks: run --step pseudo on every rank, then --step student once")
    result = run_selftrain(cfg, args.out, step=args.step, rank=rank, world_size=world_size, force=args.force)
    print(f"pseudo-labels: {Path(args.out) / 'pseudo'}")
    if result is not None:
        print_metrics(f"{cfg.task} selftrain", result, Path(args.out) / STUDENT_DIR / "metrics.json")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``datascale selftrain`` (torch is imported only when it runs)."""
    parser = subcommand(subparsers, "selftrain", _command,
                        help="self-training: a teacher run pseudo-labels unlabelled images, a student trains on both",
                        description="Step A (pseudo): the teacher run's model labels the unlabelled images "
                                    "into OUT/pseudo/ shards (resumable; split across RANK/WORLD_SIZE). Step B "
                                    "(student): fine-tune on labelled + pseudo-labelled batches into "
                                    "OUT/student/, evaluated as `datascale finetune` is.")
    add_shortcut(parser, "--task", key="task", choices=tuple(TASKS),
                 help="downstream task; configs/selftrain/TASK.yaml is the default --config")
    add_shortcut(parser, "--teacher", key="teacher", metavar="RUN", help="the teacher's finetune run folder")
    add_shortcut(parser, "--unlabelled", key="unlabelled", metavar="SHARDS_OR_FOLDER",
                 help="shards folder, subset folder or image folder")
    add_shortcut(parser, "--steps", key="finetune.train.steps", type=int, help="student optimizer steps")
    parser.add_argument("--step", default="all", choices=["all", "pseudo", "student"],
                        help="run one step (pseudo on every rank, then student once)")
    parser.add_argument("--rank", type=int, help="this process's rank (unset: $RANK, else 0)")
    parser.add_argument("--world-size", type=int, help="number of ranks (unset: $WORLD_SIZE, else 1)")
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder: OUT/pseudo/, OUT/student/")
    locks_output(parser, unless=lambda args: args.step == "pseudo")  # ranks label side by side
    add_config_args(parser, None, SelftrainConfig)
