"""EfficientTrain++ against plain pretraining, side by side on one machine and the same data.

    .venv/bin/python benchmarks/bench_curriculum.py --workdir /tmp/bench-curriculum \\
        [--seeds 0,1] [--steps 400] [--subset 7200] [--slope-sizes 240,2400]

Builds the demo world once (7,200 pretraining images, nested subsets), then
pretrains the largest subset with ``curriculum.name=none`` and
``curriculum.name=efficienttrain`` for each seed, the two arms alternating
(and their order swapped every seed) so that load from other jobs on the
machine hits both alike. Both arms run the same command, steps, batch, data
and seeds; only the curriculum differs. Reported: wall time of each run
(the whole ``datascale pretrain`` process: start-up, training, evaluations,
checkpoints, export), images/s per curriculum stage (from metrics.jsonl,
log windows wholly inside a stage), final mAP@100, and means with 95% t
intervals over seeds; the speed-up is the ratio of mean wall times. With
``--slope-sizes`` it also pretrains those smaller subsets (first seed) in
both arms and fits mAP@100 against log10(images): the data-scaling slope
with and without the curriculum.

Time: about (2 x seeds + 2 x slope sizes) pretraining runs; memory: one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ARMS = ("none", "efficienttrain")


THREADS = {"value": 0}  # torch threads per pretraining process (0: torch's default)
CURRICULUM_SETS: list[str] = []  # extra --set of the efficienttrain arm (an ablation, e.g. curriculum.num_ops=0)


def _cli(*argv: str) -> None:
    env = dict(os.environ)
    if THREADS["value"]:
        # On a shared machine a 2-thread OpenMP pool waits on whichever thread another job preempted
        # (measured: 20x slower steps at load 5); one thread per run degrades gracefully instead.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(THREADS["value"])
    subprocess.run([sys.executable, "-m", "datascale.cli", "-q", *argv], check=True, env=env)


def build_world(root: Path, sizes: list[str]) -> None:
    """The demo world, its pretraining and eval shards, and nested subsets (skipped when present)."""
    if (root / "subsets" / sizes[-1] / "subset.json").is_file():
        return
    _cli("synth", "--config", "world/demo", "--set", "pretrain.images=7200", "--out", str(root / "world"), "--force")
    for split, out in (("pretrain", "pretrain"), ("eval", "eval")):
        _cli("shards", "write", str(root / "world"), "--set", f"split={split}", "--set", "samples_per_shard=500",
             "--out", str(root / "shards" / out), "--force")
    _cli("subsets", "make", str(root / "shards" / "pretrain"), "--sizes", ",".join(sizes),
         "--names", ",".join(sizes), "--out", str(root / "subsets"), "--force")


def pretrain(root: Path, subset: str, arm: str, seed: int, steps: int | None) -> dict:
    """One run in its own process; returns its wall time, mAP@100 and images/s per stage."""
    tag = "".join(f"-{s.split('.')[-1].replace('=', '')}" for s in CURRICULUM_SETS) if arm != "none" else ""
    out = root / "runs" / f"{subset}-{arm}{tag}-seed{seed}"
    sets = [f"data.train={root / 'subsets' / subset}", f"data.eval={root / 'shards' / 'eval'}",
            f"curriculum.name={arm}", f"seed={seed}", f"data.loader.seed={seed}"]
    if arm != "none":
        sets += CURRICULUM_SETS
    if steps:
        # A shorter budget keeps the demo schedule's shape: lr decay at 3/4, one eval and checkpoint at the end.
        sets += [f"schedule.steps={steps}", f"optim.lr_decay_every={max(1, round(steps * 0.75))}",
                 f"schedule.eval_every={steps}", f"schedule.checkpoint_every={steps}"]
    argv = ["pretrain", "--config", "pretrain/demo", *[a for s in sets for a in ("--set", s)],
            "--out", str(out), "--force", "--no-progress"]
    # A finished run would be skipped and an unfinished one resumed: either would time a fraction.
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    _cli(*argv)
    wall = time.perf_counter() - start
    final = json.loads((out / "metrics.json").read_text())
    return {"subset": subset, "arm": arm, "seed": seed, "wall_s": wall,
            "map": final["metrics"]["eval"]["mAP@100"], "per_stage": _per_stage(out)}


def _per_stage(run: Path) -> dict:
    """Median images/s of the log windows by input size, dropping each size's first window
    (it may straddle a stage boundary or include start-up)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_side: dict[int, list[float]] = {}
    for row in rows:
        if "images_per_s" in row:
            by_side.setdefault(int(row.get("input_size", 0)), []).append(float(row["images_per_s"]))
    return {side: statistics.median(v[1:] or v) for side, v in sorted(by_side.items())}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (nan with one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def _fmt(values: list[float], digits: int) -> str:
    mean, half = interval(values)
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def report(results: list[dict], subset: str) -> list[str]:
    """The side-by-side table of the largest subset's runs, the speed-up and the verdict."""
    main = [r for r in results if r["subset"] == subset]
    lines = ["| arm | runs | wall s | images/s per stage (input px: images/s) | mAP@100 |", "|---|---|---|---|---|"]
    for arm in ARMS:
        runs = [r for r in main if r["arm"] == arm]
        sides = sorted({s for r in runs for s in r["per_stage"]})
        stage = ", ".join(f"{s}: {statistics.fmean(r['per_stage'][s] for r in runs if s in r['per_stage']):.0f}"
                          for s in sides)
        lines.append(f"| {arm} | {len(runs)} | {_fmt([r['wall_s'] for r in runs], 1)} | {stage} "
                     f"| {_fmt([r['map'] for r in runs], 4)} |")
    walls = {arm: [r["wall_s"] for r in main if r["arm"] == arm] for arm in ARMS}
    speedup = statistics.fmean(walls["none"]) / statistics.fmean(walls["efficienttrain"])
    paired = {r["seed"]: r["map"] for r in main if r["arm"] == "none"}
    diffs = [r["map"] - paired[r["seed"]] for r in main if r["arm"] == "efficienttrain" and r["seed"] in paired]
    mean, half = interval(diffs)
    equal = not math.isnan(half) and abs(mean) <= half
    lines += ["", f"speed-up (mean wall time none / efficienttrain): **{speedup:.2f}x** (target >= 1.5x: "
              f"{'met' if speedup >= 1.5 else 'not met'})",
              f"mAP@100 efficienttrain - none, paired by seed: {mean:+.4f}"
              + ("" if math.isnan(half) else f" ± {half:.4f} (95% t, {len(diffs)} pairs): ")
              + ("equal within its interval" if equal else "not equal within its interval" if not math.isnan(half)
                 else "one pair, no interval")]
    return lines


def slope_report(results: list[dict]) -> list[str]:
    """mAP@100 against log10(images) per arm (first seed): the slope per 10x data, least squares."""
    seed = min(r["seed"] for r in results)
    lines = ["| arm | points (images: mAP@100) | slope per 10x |", "|---|---|---|"]
    for arm in ARMS:
        points = sorted((int(r["subset"]), r["map"]) for r in results if r["arm"] == arm and r["seed"] == seed)
        if len(points) < 2:
            return []
        x, y = np.log10([p[0] for p in points]), np.array([p[1] for p in points])
        fit = stats.linregress(x, y)
        half = stats.t.ppf(0.975, len(x) - 2) * fit.stderr if len(x) > 2 else math.nan
        text = f"{fit.slope:+.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}")
        lines.append(f"| {arm} | {', '.join(f'{n}: {m:.4f}' for n, m in points)} | {text} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-curriculum"))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=0, help="0: the demo config's schedule.steps")
    parser.add_argument("--subset", default="7200")
    parser.add_argument("--slope-sizes", default="", help="smaller subsets for the scaling slope, e.g. 240,2400")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--curriculum-set", action="append", default=[],
                        help="KEY=VALUE for the efficienttrain arm only (an ablation; the report says so)")
    parser.add_argument("--arms", default=",".join(ARMS), help="arms to run (the report needs both)")
    args = parser.parse_args()
    THREADS["value"] = args.threads
    CURRICULUM_SETS.extend(args.curriculum_set)
    arms = tuple(a for a in ARMS if a in args.arms.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    small = [s for s in args.slope_sizes.split(",") if s]
    build_world(args.workdir, sorted({"240", "720", "2400", args.subset, *small}, key=int))
    started, results = time.time(), []
    for i, seed in enumerate(seeds):
        for arm in (arms if i % 2 == 0 else arms[::-1]):
            results.append(pretrain(args.workdir, args.subset, arm, seed, args.steps or None))
            print(json.dumps(results[-1]), flush=True)
    for j, size in enumerate(small):
        for arm in (arms if j % 2 == 0 else arms[::-1]):
            results.append(pretrain(args.workdir, size, arm, seeds[0], args.steps or None))
            print(json.dumps(results[-1]), flush=True)
    name = "results" + "".join(f"-{s.replace('=', '')}" for s in CURRICULUM_SETS) + ".json"
    (args.workdir / name).write_text(json.dumps(results, indent=1))
    if len(arms) < 2:
        return
    print(f"\n{platform.node()}, {platform.processor() or platform.machine()}, python {platform.python_version()}; "
          f"total {time.time() - started:.0f} s\n")
    if CURRICULUM_SETS:
        print(f"ablation: the efficienttrain arm ran with {' '.join(CURRICULUM_SETS)}")
    print("\n".join(report(results, args.subset)))
    if small:
        print("\n" + "\n".join(slope_report(results)))


if __name__ == "__main__":
    main()
