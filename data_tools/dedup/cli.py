"""``datascale dedup index``, ``datascale dedup audit`` and ``datascale dedup label``.

Flags are shorthands for config keys (``--max-memory 8GB`` is
``--set index.max_memory=8GB``), so every value is type- and range-checked by
the schema in :mod:`data_tools.dedup.schema` and recorded in the lineage.
"""

from __future__ import annotations

import argparse
from typing import Any

from datascale.cli import add_config_args, add_shortcut, config_from_args, locks_output, subcommand

INDEX_HELP = """\
Embed the pretraining pool (a subset folder or a shards folder) and build its
FAISS index in INDEX_DIR. Small pools get an exact index; large ones IVF-PQ
sized from the pool and --max-memory. Rerunning resumes: finished shards are
not embedded again. On many machines: `--step embed` on every rank (RANK and
WORLD_SIZE from the DeepSpeed launcher, or --rank/--world-size), then
`--step train`, `--step add --part I --parts N` on each machine, `--step merge`.
"""

AUDIT_HELP = """\
Find each test image's nearest pool images (exact cosine after the index's
candidates), flag those at or above the threshold, and write per test set
AUDIT_DIR/NAME/: duplicates.parquet, summary.json, report.md, gallery.png and
clean/ (the test set without flagged images, in its own format). Test sets:
COCO .json, VOC .txt image list, image folder or shards folder (NAME=PATH to
name one). With --ground-truth (the synthetic world's duplicates/planted.csv,
or a CSV test_id,pretrain_key[,is_duplicate][,transform], or the pairs.csv of
`dedup label` once marked) it calibrates the threshold for --target-precision
and reports precision and recall per threshold, and held-out (5-fold CV over
test images) with 95% Clopper-Pearson intervals. An is_duplicate column with
no 0 is refused: without negatives precision cannot be measured.
"""


def _cmd_index(args: argparse.Namespace) -> int:
    from data_tools.dedup.build import build_index
    from data_tools.dedup.schema import DedupConfig
    cfg = config_from_args(DedupConfig, args)
    result = build_index(args.pool, args.out, cfg, step=args.step, part=args.part, parts=args.parts,
                         rank=args.rank, world_size=args.world_size, force=args.force,
                         progress=not args.quiet)
    if "factory" in result:
        print(f"index of {result['pool_images']:,} pool images x {result['pool_views']} views "
              f"({result['factory']}, "
              f"{result['index_bytes_per_vector']} bytes/vector on disk) -> {args.out}")
    else:
        print(f"dedup index step {args.step} done -> {args.out}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from data_tools.dedup.audit import run_audit
    from data_tools.dedup.schema import DedupConfig
    cfg = config_from_args(DedupConfig, args)
    summaries = run_audit(args.index, args.testset, args.out, cfg.audit,
                          ground_truth=args.ground_truth, force=args.force, progress=not args.quiet)
    for s in summaries:
        line = (f"{s['testset']['name']}: {s['images_with_duplicate']} of {s['readable_images']} readable "
                f"test images have a near-duplicate at cos >= {s['threshold']:.3f} "
                f"({s['threshold_source']})")
        cal = s.get("calibration")
        if cal:
            at = cal["at_threshold"]
            line += f"; in-sample precision {at['precision']:.3f}, recall {at['recall']:.3f}"
        held = s.get("held_out") or {}
        if all((held.get(m) or {}).get("value") is not None for m in ("precision", "recall")):
            p, r = held["precision"], held["recall"]
            line += (f"; held-out precision {p['value']:.3f} [{p['interval'][0]:.3f}, "
                     f"{p['interval'][1]:.3f}], recall {r['value']:.3f} [{r['interval'][0]:.3f}, "
                     f"{r['interval'][1]:.3f}]")
        remaining = s.get("remaining_duplicates")
        if remaining:
            line += (f"; ~{remaining['estimate']:g} copies remain in clean/ "
                     f"[{remaining['interval'][0]:g}, {remaining['interval'][1]:g}]")
        if s["unreadable_images"]:
            line += f"; {s['unreadable_images']} unreadable (listed in summary.json)"
        print(f"{line} -> {args.out}/{s['testset']['name']}/report.md")
    return 0


LABEL_HELP = """\
Export a stratified sample of an audit's pairs for a person to mark:
LABELS_DIR/pairs.csv (fill is_duplicate with 1 or 0), strata.json and
gallery-NN.png (the pairs, numbered as in pairs.csv). Each test image's best
pair is drawn by score band around the audit's threshold, more pairs near it.
Then `datascale dedup audit INDEX --testset ... --ground-truth LABELS_DIR/pairs.csv`
calibrates the threshold on the marks (held-out precision and recall with
intervals) and estimates how many copies remain in clean/.
"""


def _cmd_label(args: argparse.Namespace) -> int:
    from data_tools.dedup.labels import export_sample
    from data_tools.dedup.schema import DedupConfig
    cfg = config_from_args(DedupConfig, args)
    result = export_sample(args.audit, args.out, cfg.label, progress=not args.quiet)
    print(f"{result['pairs']} pairs of {', '.join(result['testsets'])} to mark -> {result['csv']} "
          f"(gallery: {len(result['gallery'])} page(s) beside it); fill is_duplicate with 1 or 0, then "
          f"`datascale dedup audit INDEX --testset ... --ground-truth {result['csv']}`")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``datascale dedup index``, ``dedup audit`` and ``dedup label``."""
    from data_tools.dedup.schema import DedupConfig
    group = subcommand(subparsers, "dedup", lambda args: group.print_help() or 2,
                       help="near-duplicates of downstream test sets in the pretraining pool (FAISS)")
    actions = group.add_subparsers(dest="dedup_command", metavar="ACTION", parser_class=type(group))
    index = subcommand(actions, "index", _cmd_index, help="embed the pool and build its FAISS index",
                       description=INDEX_HELP)
    index.add_argument("pool", help="subset folder (subset.json) or shards folder (sizes.json)")
    index.add_argument("--out", required=True, help="index folder (INDEX_DIR)")
    add_shortcut(index, "--embedder", key="embedder.name",
                 help="pixels (model-free) or backbone (needs --checkpoint)")
    add_shortcut(index, "--checkpoint", key="embedder.backbone.checkpoint",
                 help="backbone.pt (or its folder) for --embedder backbone")
    add_shortcut(index, "--max-memory", key="index.max_memory",
                 help="RAM budget of the index, e.g. 2GB (sets the PQ code size)")
    index.add_argument("--step", default="all", choices=["all", "embed", "train", "add", "merge"],
                       help="run one step of a distributed build")
    index.add_argument("--part", type=int, help="build part I (with --parts N; --step add)")
    index.add_argument("--parts", type=int, help="number of build parts (--step add/merge)")
    index.add_argument("--rank", type=int, help="this process's rank (unset: $RANK, else 0)")
    index.add_argument("--world-size", type=int, help="number of ranks (unset: $WORLD_SIZE, else 1)")
    add_shortcut(index, "--workers", key="embedder.workers", type=int, help="image decoding processes")
    add_config_args(index, "dedup/demo", DedupConfig)
    locks_output(index, unless=lambda args: args.step in ("embed", "add"))  # parts run side by side
    audit = subcommand(actions, "audit", _cmd_audit, help="audit test sets against a dedup index",
                       description=AUDIT_HELP)
    audit.add_argument("index", help="index folder written by `datascale dedup index`")
    audit.add_argument("--testset", action="append", required=True, metavar="[NAME=]PATH",
                       help="test set (repeatable): COCO .json, VOC .txt list, image folder, shards")
    audit.add_argument("--out", required=True, help="audit folder; one subfolder per test set")
    add_shortcut(audit, "--threshold", key="audit.threshold", type=float,
                 help="cosine in [-1, 1] (unset: calibrated on --ground-truth, else the embedder's default)")
    audit.add_argument("--ground-truth", help="CSV of known duplicate pairs (planted.csv)")
    add_shortcut(audit, "--target-precision", key="audit.target_precision", type=float,
                 help="precision the calibrated threshold must reach")
    add_shortcut(audit, "--embedder", key="audit.embedder", help="the embedder you expect the index to use (checked)")
    add_shortcut(audit, "--workers", key="audit.workers", type=int, help="image decoding processes")
    add_config_args(audit, "dedup/demo", DedupConfig)
    locks_output(audit)
    label = subcommand(actions, "label", _cmd_label, help="export a sample of pairs to mark by hand",
                       description=LABEL_HELP)
    label.add_argument("audit", help="audit folder written by `datascale dedup audit` (or one test set's)")
    label.add_argument("--out", required=True, help="folder for pairs.csv, strata.json, gallery-NN.png")
    add_shortcut(label, "--pairs", key="label.pairs", type=int, help="pairs to mark, over all test sets")
    add_shortcut(label, "--seed", key="label.seed", type=int, help="seed of the sample")
    add_config_args(label, "dedup/demo", DedupConfig)
    locks_output(label)
