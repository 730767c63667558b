"""Slope intervals over pretraining runs: coverage measured by simulation through fit_curve.

A simulated study has 4 data sizes, R pretraining runs (backbones) per size
with run-to-run sd ``sd_pretrain`` and 2 fine-tuning seeds per backbone with
sd ``sd_finetune``; the truth is log-linear. A nominal 95% interval must
contain the true slope in at least 90% of studies in both regimes
(pretraining or fine-tuning variance dominating) with 1 and 2 backbones per
size. 400 seeded studies per case: the estimate's own standard error is ~1.1
points, so 0.90 is four standard errors below the nominal 0.95.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.config import FitConfig
from analysis.fit import fit_curve, fit_table
from analysis.report import fits_summary

SIZES = np.array([1e7, 3e7, 1e8, 3e8])
INTERCEPT, SLOPE = 0.3, 0.03
STUDIES = 400
REGIMES = {"pretraining dominates": (0.01, 0.003), "fine-tuning dominates": (0.001, 0.01)}


def simulate(rng, backbones_per_size, sd_pretrain, sd_finetune, seeds=2, sizes=SIZES, truth=None):
    """(sizes, values, pretrain_run) of one study: each backbone's luck is shared by its seeds."""
    truth = truth or (lambda n: INTERCEPT + SLOPE * np.log10(n))
    n = np.repeat(sizes, backbones_per_size * seeds)
    backbone = np.repeat(np.arange(len(sizes) * backbones_per_size), seeds)
    luck = rng.normal(0, sd_pretrain, len(sizes) * backbones_per_size)[backbone]
    values = truth(n) + luck + rng.normal(0, sd_finetune, len(n))
    return n, values, np.array([f"runs/pretrain/{b}" for b in backbone])


def _coverage(backbones_per_size, sd_pretrain, sd_finetune, label_runs_as_backbones=False):
    rng = np.random.default_rng([backbones_per_size, int(sd_pretrain * 1e4), int(sd_finetune * 1e4)])
    config = FitConfig(bootstrap=50, ci_level=0.95)
    hits, widths = 0, []
    for _ in range(STUDIES):
        n, y, backbone = simulate(rng, backbones_per_size, sd_pretrain, sd_finetune)
        if label_runs_as_backbones:  # the old mistake: every fine-tuning run an independent point
            backbone = np.arange(len(n))
        row = fit_curve(n, y, config=config, pretrain_run=backbone)
        hits += row["slope_per_10x_low"] <= SLOPE <= row["slope_per_10x_high"]
        widths.append(row["slope_per_10x_high"] - row["slope_per_10x_low"])
    return hits / STUDIES, float(np.median(widths))


@pytest.mark.parametrize("backbones_per_size", [1, 2])
@pytest.mark.parametrize("regime", list(REGIMES))
def test_slope_interval_covers_the_truth_at_the_nominal_rate(regime, backbones_per_size):
    coverage, _ = _coverage(backbones_per_size, *REGIMES[regime])
    assert 0.90 <= coverage <= 0.985, coverage


def test_counting_fine_tuning_runs_as_independent_points_would_undercover():
    """The check above can fail: the same studies, analysed run by run, cover far less often."""
    coverage, _ = _coverage(1, *REGIMES["pretraining dominates"], label_runs_as_backbones=True)
    assert coverage < 0.85, coverage  # ~0.74: 8 runs on 6 dof, though only 4 backbones vary


def test_more_pretraining_runs_narrow_the_interval():
    _, one = _coverage(1, *REGIMES["pretraining dominates"])
    _, two = _coverage(2, *REGIMES["pretraining dominates"])
    # One backbone per size: t on 2 dof (4.30) times a larger standard error.
    assert two < 0.5 * one


def test_one_backbone_per_size_is_wide_and_says_more_pretraining_runs_would_narrow_it():
    n, y, backbone = simulate(np.random.default_rng(0), 1, 0.01, 0.003)
    row = fit_curve(n, y, config=FitConfig(bootstrap=50), pretrain_run=backbone)
    assert row["n_backbones"] == 4 and row["n_runs"] == 8 and row["interval_dof"] == 2
    assert row["min_backbones_per_size"] == 1 and np.isnan(row["lack_of_fit_p"])
    assert "more pretraining runs per size would narrow it" in row["note"]


def test_seeds_of_one_backbone_are_averaged_before_the_fit():
    n, y, backbone = simulate(np.random.default_rng(1), 2, 0.01, 0.003, seeds=3)
    row = fit_curve(n, y, config=FitConfig(bootstrap=50), pretrain_run=backbone)
    means = pd.DataFrame({"n": n, "y": y, "b": backbone}).groupby("b").mean()
    line = np.polyfit(np.log10(means["n"]), means["y"], 1)
    assert row["slope_per_10x"] == pytest.approx(line[0]) and row["n_backbones"] == 8
    assert row["interval_dof"] == 6 and "narrow" not in row["note"]


def test_without_pretrain_run_the_runs_of_a_size_are_one_backbone():
    n, y, _ = simulate(np.random.default_rng(2), 2, 0.01, 0.003)
    row = fit_curve(n, y, config=FitConfig(bootstrap=50))
    assert row["n_backbones"] == 4 and row["interval_dof"] == 2
    assert "no pretrain_run: the runs of one size are taken as one pretraining run" in row["note"]


def _table(n, y, backbone):
    return pd.DataFrame({"task": "detection", "metric": "AP", "test_set": "original", "mode": "finetune",
                         "arch": "resnet50", "init": "pretrained", "subset_images": n.astype(int),
                         "seed": np.arange(len(n)) % 2, "run_dir": [f"run{i}" for i in range(len(n))],
                         "pretrain_run": backbone, "value": y})


def test_fit_table_uses_the_pretrain_run_column_and_the_report_says_when_runs_are_single():
    rng = np.random.default_rng(3)
    n, y, backbone = simulate(rng, 2, 0.01, 0.003)
    row = fit_table(_table(n, y, backbone), FitConfig(bootstrap=50), progress=False).fits.iloc[0]
    direct = fit_curve(n, y, config=FitConfig(bootstrap=50), metric="AP", pretrain_run=backbone)
    assert row["n_backbones"] == 8 and row["slope_per_10x_low"] == pytest.approx(direct["slope_per_10x_low"])
    assert not np.isnan(row["lack_of_fit_p"])
    n, y, backbone = simulate(rng, 1, 0.01, 0.003)
    fits = fit_table(_table(n, y, backbone).drop(columns=["pretrain_run"]), FitConfig(bootstrap=50),
                     progress=False).fits
    assert fits.iloc[0]["n_backbones"] == 4 and "more pretraining runs" in fits.iloc[0]["note"]
    assert "pretraining runs" in fits_summary(fits).columns


def test_power_law_limit_interval_over_backbones_covers_when_pretraining_variance_dominates():
    """Bootstrap over backbones (resampled within sizes): a lighter check of the power law's intervals."""
    rng = np.random.default_rng(4)
    sizes = np.geomspace(1e6, 3e8, 6)
    floor, coefficient, alpha = 0.3, 2.0, 0.25
    studies, hits = 120, 0
    for _ in range(studies):
        n, y, backbone = simulate(rng, 2, 0.003, 0.001, sizes=sizes,
                                  truth=lambda n: 1 - (floor + coefficient * n ** -alpha))
        row = fit_curve(n, y, "powerlaw", FitConfig(bootstrap=200), metric="AP", pretrain_run=backbone)
        assert row["interval_kind"] == "backbones"
        hits += row["limit_low"] <= 1 - floor <= row["limit_high"]
    assert hits / studies >= 0.85, hits / studies
