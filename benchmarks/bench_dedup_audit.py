"""Benchmark: the audit's precision and recall on a synthetic world, crop alignment on and off.

Builds a world (synth -> shards -> dedup index, skipped when --workdir
already holds them), then audits its three test sets against the planted
copies twice in one run, with and without ``audit.align``, and prints the
calibrated threshold, precision, recall, recall per transform, the held-out
(cross-validated) precision and recall with 95% Clopper-Pearson intervals
and the time.

    .venv/bin/python benchmarks/bench_dedup_audit.py --workdir /tmp/w24                 # 24k pool
    .venv/bin/python benchmarks/bench_dedup_audit.py --workdir /tmp/w7k \\
        --world-set pretrain.images=7200                                                 # the study's
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from datascale.cli import main as datascale

TESTSETS = ["detection/annotations/instances_test.json",
            "segmentation/ImageSets/Segmentation/test.txt",
            "pose/annotations/person_keypoints_test.json"]


def build(root: Path, world_config: str, world_set: list[str], dedup_config: str) -> None:
    sets = [a for s in world_set for a in ("--set", s)]
    steps = [(root / "world", ["synth", "-c", world_config, *sets, "--out", str(root / "world")]),
             (root / "shards", ["shards", "write", str(root / "world"), "--out", str(root / "shards")]),
             (root / "index", ["dedup", "index", str(root / "shards"), "--out", str(root / "index"),
                               "-c", dedup_config])]
    for folder, argv in steps:
        if not (folder / "complete.json").is_file():
            assert datascale(["-q", *argv]) == 0, argv


def audit(root: Path, dedup_config: str, align: bool) -> dict:
    out = root / ("audit_aligned" if align else "audit_views")
    shutil.rmtree(out, ignore_errors=True)
    argv = ["-q", "dedup", "audit", str(root / "index"), "--out", str(out), "-c", dedup_config,
            "--ground-truth", str(root / "world" / "duplicates" / "planted.csv"),
            "--set", f"audit.align.enabled={'true' if align else 'false'}"]
    for relative in TESTSETS:
        argv += ["--testset", str(root / "world" / relative)]
    started = time.perf_counter()
    assert datascale(argv) == 0
    seconds = time.perf_counter() - started
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]
    joint = summaries[0]["joint_calibration"]
    aligned = [s["aligned"] for s in summaries if s["aligned"]]
    return {"seconds": seconds, "threshold": summaries[0]["threshold"], "joint": joint,
            "align_seconds": sum(a["seconds"] for a in aligned),
            "pairs_aligned": sum(a["pairs_aligned"] for a in aligned),
            "test_images": sum(s["readable_images"] for s in summaries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="folder for the world, shards and index")
    parser.add_argument("--world-config", default="world/demo")
    parser.add_argument("--world-set", action="append", default=[], help="synth --set override")
    parser.add_argument("--dedup-config", default="dedup/demo")
    args = parser.parse_args()
    root = Path(args.workdir)
    build(root, args.world_config, args.world_set, args.dedup_config)
    pool = json.loads((root / "index" / "index.json").read_text())["store"]["ntotal"]
    print(f"pool {pool:,} images; {args.world_config} {' '.join(args.world_set)}")
    for align in (False, True):
        r = audit(root, args.dedup_config, align)
        at = r["joint"]["at_threshold"]
        per = ", ".join(f"{name} {v['found']}/{v['pairs']}" for name, v in r["joint"]["per_transform"].items())
        print(f"{'views + alignment' if align else 'views only':18s} threshold {r['threshold']:.3f}  "
              f"precision {at['precision']:.3f}  recall {at['recall']:.3f}  "
              f"({at['flagged']} flagged; missed {at['missed'] or 'none'})")
        print(f"{'':18s} per transform: {per}")
        held = r["joint"]["held_out"]
        if "precision" in held:
            p, q = held["precision"], held["recall"]
            print(f"{'':18s} held-out ({held['folds']}-fold CV): precision {p['value']:.3f} "
                  f"[{p['interval'][0]:.3f}, {p['interval'][1]:.3f}]  recall {q['value']:.3f} "
                  f"[{q['interval'][0]:.3f}, {q['interval'][1]:.3f}]")
        print(f"{'':18s} audit {r['seconds']:.1f} s for {r['test_images']} test images"
              + (f"; alignment {r['align_seconds']:.1f} s for {r['pairs_aligned']} pairs" if align else ""))


if __name__ == "__main__":
    main()
