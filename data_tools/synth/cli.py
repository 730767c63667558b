"""``datascale synth``: make the synthetic JFT-like world."""

from __future__ import annotations

import argparse

from datascale.cli import add_config_args, config_from_args, locks_output, subcommand
from datascale.errors import ConfigError
from data_tools.synth.config import WorldConfig

DEFAULT_CONFIG = "world/demo"


def register_cli(subparsers) -> None:
    """Add ``datascale synth`` (heavy imports happen only when it runs)."""
    parser = subcommand(
        subparsers, "synth", _run_cli, help="make the synthetic JFT-like world",
        description="Render a seeded synthetic world: pretraining pool with noisy labels, dense eval set, "
                    "COCO detection and keypoints, VOC segmentation, and planted near-duplicates. "
                    "Example: datascale synth --config world/tiny --out worlds/tiny")
    add_config_args(parser, DEFAULT_CONFIG, WorldConfig)
    parser.add_argument("--out", required=True, help="output folder for the world (WORLD/ in docs/formats.md)")
    locks_output(parser)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the CPUs available); output is identical for any count")


def _run_cli(args: argparse.Namespace) -> int:
    from data_tools.synth.world import generate_world  # numpy, PIL, pycocotools

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    config = config_from_args(WorldConfig, args)
    state, summary = generate_world(config, args.out, workers=args.workers, force=args.force)
    if state == "complete":
        print(f"{args.out}: already complete (same config); nothing to do")
        return 0
    pool = summary["pretrain"]
    print(f"{args.out}: {summary['images']['total']} images, {summary['classes']['total']} classes; "
          f"pretrain noise rate {pool['noise_rate_measured']:.3f} (configured {pool['noise_rate_configured']}), "
          f"{summary['duplicates']['total']} planted duplicates; see {args.out}/card.md")
    return 0
