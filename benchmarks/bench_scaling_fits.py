"""Speed of the analysis stage: collecting run folders, fitting curves with bootstrap, plotting.

    .venv/bin/python benchmarks/bench_scaling_fits.py [--runs 2000] [--bootstrap 1000]

Prints, side by side in one run: run folders collected per second; seconds per
curve for the log-linear and power-law fits with their batched bootstrap, and
for the power law refitted resample by resample with scipy's least_squares
(the obvious alternative), with the speed-up; seconds per figure (PNG + SVG).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares

from analysis.config import FitConfig, PlotConfig
from analysis.fit import fit_curve, fit_table
from analysis.plots import plot_scaling
from analysis.results import collect_runs, to_frame, write_results

# Six sizes: the power law is fitted only from k + 3 = 6 sizes (analysis.fit_models.FitModel.fit_sizes).
SIZES = np.array([3e6, 1e7, 3e7, 1e8, 3e8, 1e9])


def make_runs(root: Path, count: int) -> None:
    """Minimal finished run folders (config.yaml lineage, metrics.json, complete.json)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        run = root / f"run{i:05d}"
        run.mkdir(parents=True)
        size = int(SIZES[i % 4])
        lineage = {"task": ("detection", "segmentation", "pose")[i // 4 % 3], "mode": ("frozen", "finetune")[i % 2],
                   "seed": i // 24, "arch": "resnet50", "init": "pretrained", "subset_images": size,
                   "steps": 1000, "num_classes": 18291, "pretrain_run": None, "subset_name": None}
        (run / "config.yaml").write_text(yaml.safe_dump({"stage": "finetune", "config": {}, "lineage": lineage}))
        value = 0.2 + 0.03 * np.log10(size) + rng.normal(0, 0.005)
        (run / "metrics.json").write_text(json.dumps({"metrics": {"original": {"AP": value},
                                                                  "cleaned": {"AP": value - 0.01}}}))
        (run / "complete.json").write_text("{}")


def time_it(function, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def powerlaw_by_least_squares(n: np.ndarray, y: np.ndarray, draws: int) -> None:
    """The alternative design: one bounded least_squares per bootstrap resample.

    Given its best chances: analytic Jacobian, sizes scaled to [1, 30], and a
    warm start from the fit to all runs.
    """
    rng = np.random.default_rng(0)
    x, err = n / n.min(), 1 - y

    def solve(xs, es, start):
        def jacobian(p):
            power = xs ** -p[2]
            return np.column_stack([np.ones_like(xs), power, -p[1] * power * np.log(xs)])
        return least_squares(lambda p: p[0] + p[1] * xs ** -p[2] - es, start, jac=jacobian, x_scale="jac",
                             bounds=([0, 0, 1e-3], [np.inf, np.inf, 3])).x

    start = solve(x, err, [0.1, 0.5, 0.3])
    for _ in range(draws):
        pick = rng.integers(0, len(y), len(y))
        solve(x[pick], err[pick], start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_runs(root / "runs", args.runs)
        seconds = time_it(lambda: write_results(collect_runs([root / "runs"], progress=False),
                                                root / "results" / "results.parquet"), repeat=2)
        print(f"collect: {args.runs} run folders in {seconds:.2f} s = {args.runs / seconds:,.0f} runs/s")

        rng = np.random.default_rng(1)
        n = np.repeat(SIZES, 3)
        y = 0.2 + 0.03 * np.log10(n) + rng.normal(0, 0.005, len(n))
        config = FitConfig(bootstrap=args.bootstrap, predict_images=1e9, target=0.5)
        line = time_it(lambda: fit_curve(n, y, "loglinear", config, "AP"))
        batched = time_it(lambda: fit_curve(n, y, "powerlaw", config, "AP"))
        looped = time_it(lambda: powerlaw_by_least_squares(n, y, args.bootstrap), repeat=1)
        print(f"fit one curve ({len(n)} runs, {args.bootstrap} resamples): loglinear {line * 1e3:.1f} ms, "
              f"powerlaw batched {batched * 1e3:.1f} ms, powerlaw least_squares loop {looped * 1e3:.0f} ms "
              f"(batched is {looped / batched:.0f}x faster)")

        results = to_frame([{"task": t, "metric": "AP", "test_set": "original", "mode": m, "arch": "resnet50",
                             "init": "pretrained", "subset_images": int(s), "seed": seed, "run_dir": f"{t}{m}{s}{seed}",
                             "value": 0.2 + 0.03 * np.log10(s) + rng.normal(0, 0.005)}
                            for t in ("detection", "segmentation", "pose") for m in ("frozen", "finetune")
                            for s in SIZES for seed in range(3)])
        table_seconds = time_it(lambda: fit_table(results, config, progress=False), repeat=1)
        fits = fit_table(results, config, progress=False)
        print(f"fit table: 6 curves x 2 models in {table_seconds:.2f} s")
        plot_seconds = time_it(lambda: plot_scaling(results, fits, root / "plots", PlotConfig()), repeat=1)
        print(f"plot: 1 figure with 3 panels, PNG + SVG, in {plot_seconds:.2f} s")


if __name__ == "__main__":
    main()
