"""``datascale study``: the whole scaling study from one config."""

from __future__ import annotations

import argparse
import time

from datascale import lock
from datascale.cli import subcommand
from datascale.config import load_config
from scaling.study.config import StudyConfig
from scaling.study import plan as plan_module
from scaling.study.plan import build_plan, print_plan, print_summary, write_study_section
from scaling.study.runner import run_plan


def register_cli(subparsers) -> None:
    parser = subcommand(subparsers, "study", _main, help="run the whole scaling study from one config",
                        description=plan_module.__doc__)
    parser.add_argument("config", nargs="?", default="studies/demo",
                        help="study config: a path or a built-in name (studies/demo, studies/findings, studies/tiny, studies/jft300m)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one study config value, e.g. --set out=/tmp/study")
    parser.add_argument("--dry-run", action="store_true", help="print every command, run nothing")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="run up to N pretraining / fine-tuning runs at once, each with cores // N "
                             "threads (default: the config's jobs, 1); logs in STUDY/logs/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _main(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *([f"jobs={args.jobs}"] if args.jobs is not None else [])]
    cfg = load_config(StudyConfig, args.config, overrides)
    plan = build_plan(cfg)
    if args.dry_run:
        print_plan(plan, cfg)
        for step in plan.steps:
            via = "  # DeepSpeed launcher" if step.distributed else ""
            print(step.command() + via)
        return 0
    print_plan(plan, cfg)
    started = time.time()
    # One study per folder at a time; each stage also locks its own output folder.
    with lock.hold(plan.root, lock.command_line()):
        try:
            run_plan(plan, progress=not args.no_progress, jobs=cfg.jobs)
        finally:
            if any(s.status != "pending" for s in plan.steps):
                print_summary(plan)
        write_study_section(plan, cfg)
    print(f"study {cfg.name} finished in {(time.time() - started) / 60:.1f} min")
    return 0
