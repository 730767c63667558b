"""``datascale shards write`` and ``datascale shards verify``."""

from __future__ import annotations

from typing import Any

from datascale.cli import add_config_args, config_from_args, locks_output, subcommand
from datascale.launch import (deepspeed_command, launched_by_deepspeed, rank_from_env, run_launcher,
                              strip_launch_args)
from data_tools.shards.config import ShardsConfig
from data_tools.shards.distributed import BARRIER_TIMEOUT

MANY_RANKS = """\
On many machines (one output folder on a shared filesystem): run the same
command on every rank with RANK/WORLD_SIZE set (DeepSpeed launcher, torchrun)
or --rank R --world-size W; `--nproc N` starts N ranks here through the
DeepSpeed launcher, `datascale launch --hostfile FILE shards write ...` on a
cluster. The shards are byte-identical to a one-rank run; a rank killed and
rerun resumes; rank 0 writes manifest.parquet once all ranks are done."""


def _cmd_write(args) -> int:
    from data_tools.shards.write import write_shards

    cfg = config_from_args(ShardsConfig, args)
    if args.nproc > 1 and not launched_by_deepspeed():
        return run_launcher(deepspeed_command(strip_launch_args(args.argv), nproc=args.nproc))
    rank, world_size = rank_from_env(args.rank, args.world_size)
    summary = write_shards(args.input, args.out, cfg, force=args.force, progress=not args.quiet,
                           rank=rank, world_size=world_size, barrier_timeout=args.barrier_timeout)
    if "rank" in summary:
        print(f"rank {rank} of {world_size}: its {summary['shards_of_rank']} of "
              f"{summary['shards']} shards written -> {args.out} (rank 0 writes the manifest)")
        return 0
    skipped = sum(summary["skipped"].values())
    print(f"{summary['images']} images in {summary['shards']} shards -> {args.out}"
          f" ({summary.get('reencoded', 0)} re-encoded to JPEG; "
          f"{skipped} skipped: {summary['skipped'] or 'none'}; see card.md)")
    return 0


def _cmd_verify(args) -> int:
    from data_tools.shards.report import print_verify_report, verify_shards

    report = verify_shards(args.shards, full=args.full, progress=not args.quiet)
    print_verify_report(report)
    return 0 if report["ok"] else 1


def register_cli(subparsers: Any) -> None:
    """Add ``datascale shards write`` and ``datascale shards verify``."""
    group = subcommand(subparsers, "shards", lambda args: group.print_help() or 2,
                       help="write or verify WebDataset shards in hash-rank order")
    actions = group.add_subparsers(dest="shards_command", metavar="ACTION",
                                   parser_class=type(group))
    write = subcommand(actions, "write", _cmd_write,
                       help="images (folders, manifest, tars, synthetic world) -> shards",
                       description="Write images as WebDataset shards in hash-rank order, so "
                       "that nested subsets are shard prefixes. INPUT is an image folder tree "
                       "(ROOT/CLASS/IMG), a .csv/.parquet/.jsonl manifest (image path + labels), "
                       "a folder of .tar shards (WebDataset/img2dataset), an img2dataset "
                       "'files' folder (00000/KEY.jpg + KEY.json), or a synthetic world folder "
                       "(--set split=eval for its eval set). Tar and 'files' labels: "
                       "labels_from=auto|cls|json|manifest; auto takes KEY.cls, else the "
                       "labels_column field of KEY.json, or the labels_manifest=PATH sidecar "
                       "(key_column + labels_column) when set. Captions are never labels; they "
                       "are kept with url and sha256 in the output KEY.json (and KEY.txt).\n\n"
                       + MANY_RANKS)
    write.add_argument("input", help="image folder tree, manifest file, tar or files folder, "
                                     "or world")
    write.add_argument("--out", required=True, help="output shards folder")
    write.add_argument("--rank", type=int, help="this process's rank (unset: $RANK, else 0)")
    write.add_argument("--world-size", type=int,
                       help="number of ranks writing --out together (unset: $WORLD_SIZE, else 1)")
    write.add_argument("--barrier-timeout", type=float, default=BARRIER_TIMEOUT, metavar="SECONDS",
                       help="how long a rank waits for the others at each step")
    write.add_argument("--nproc", type=int, default=1,
                       help="ranks on this machine, started through the DeepSpeed launcher")
    # Ranks share the folder: rank 0 (or the --nproc parent) holds its lock.
    locks_output(write, unless=lambda args: rank_from_env(args.rank, args.world_size)[0] != 0)
    add_config_args(write, None, ShardsConfig)
    verify = subcommand(actions, "verify", _cmd_verify,
                        help="check every shard against manifest.parquet and sizes.json")
    verify.add_argument("shards", help="shards folder written by `datascale shards write`")
    verify.add_argument("--full", action="store_true",
                        help="decode every image and check its bytes (sha1) and labels against "
                             "manifest.parquet (default: members, keys, counts, first image per shard)")
