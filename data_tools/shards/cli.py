"""``datascale shards write`` and ``datascale shards verify``."""

from __future__ import annotations

from typing import Any

from datascale.cli import add_config_args, config_from_args, locks_output, subcommand
from data_tools.shards.config import ShardsConfig


def _cmd_write(args) -> int:
    from data_tools.shards.write import write_shards

    cfg = config_from_args(ShardsConfig, args)
    summary = write_shards(args.input, args.out, cfg, force=args.force,
                           progress=not args.quiet)
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
                       "are kept with url and sha256 in the output KEY.json (and KEY.txt).")
    write.add_argument("input", help="image folder tree, manifest file, tar or files folder, "
                                     "or world")
    write.add_argument("--out", required=True, help="output shards folder")
    locks_output(write)
    add_config_args(write, None, ShardsConfig)
    verify = subcommand(actions, "verify", _cmd_verify,
                        help="check every shard against manifest.parquet and sizes.json")
    verify.add_argument("shards", help="shards folder written by `datascale shards write`")
    verify.add_argument("--full", action="store_true",
                        help="decode every image and check its bytes (sha1) and labels against "
                             "manifest.parquet (default: members, keys, counts, first image per shard)")
