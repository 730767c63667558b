"""``datascale subsets make``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datascale.cli import add_config_args, add_shortcut, config_from_args, locks_output, subcommand
from data_tools.subsets.subset import SubsetsConfig


def register_cli(subparsers: Any) -> None:
    """Add ``datascale subsets make``."""
    group = subcommand(subparsers, "subsets", lambda args: group.print_help() or 2,
                       help="nested random subsets (10M < 30M < 100M < 300M) of a shards folder")
    actions = group.add_subparsers(dest="subsets_command", metavar="ACTION",
                                   parser_class=type(group))
    make = subcommand(actions, "make", _cmd_make, help="cut nested subsets by hash rank",
                      description="Cut nested subsets of a shards folder: each is a hash-rank "
                      "prefix of the shards (10M < 30M < 100M < 300M), optionally restricted to "
                      "some classes. Writes SUBSETS/NAME/{subset.json, manifest.parquet, "
                      "stats.json, classes.json} and, for plain webdataset and open_clip, "
                      "urls.txt and shards/ (links to the full shards, the boundary shard cut "
                      "to the subset, sizes.json).")
    make.add_argument("shards", help="shards folder written by `datascale shards write`")
    make.add_argument("--out", required=True, help="folder for the subset folders")
    locks_output(make)
    add_shortcut(make, "--sizes", key="sizes", is_list=True,
                 help="comma-separated sizes: 10M,30M,100M,300M or 400,1200,4000 or 0.033,0.1,0.33,1")
    add_shortcut(make, "--names", key="names", is_list=True, help="comma-separated subset names, one per size")
    add_shortcut(make, "--classes", key="classes", is_list=True, help="comma-separated class names or ids to keep")
    add_shortcut(make, "--top-classes", key="top_classes", type=int, help="keep the K most frequent classes")
    add_config_args(make, None, SubsetsConfig)


def _cmd_make(args) -> int:
    from data_tools.subsets.make import make_subsets  # numpy, pyarrow

    cfg = config_from_args(SubsetsConfig, args)
    subsets = make_subsets(args.shards, args.out, cfg, force=args.force, progress=not args.quiet)
    for subset in subsets:
        urls = Path(args.out) / subset.name / "urls.txt"
        print(f"{subset.name}: {subset.images:,} images, {len(subset.shards)} shards, "
              f"max_rank {subset.max_rank:.6g} -> {Path(args.out) / subset.name}"
              + (f" (webdataset: {urls})" if urls.is_file() else ""))
    return 0
