"""Log-linear fits (metric = a + b * log10 N): known slopes recovered, t intervals of textbook width.

Coverage with pretraining and fine-tuning variance together is in test_fit_coverage.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.config import FitConfig
from analysis.fit import bootstrap_draws, expanded_level, fit_curve
from analysis.fit_models import FIT_MODELS

PAPER_SIZES = np.array([1e7, 3e7, 1e8, 3e8])
INTERCEPT, SLOPE = 0.2, 0.03


def _noisy_line(n, rng, noise=0.01):
    return INTERCEPT + SLOPE * np.log10(n) + rng.normal(0, noise, len(n))


def test_exact_line_is_recovered_exactly():
    n = np.repeat(PAPER_SIZES, 2)
    row = fit_curve(n, INTERCEPT + SLOPE * np.log10(n) + np.tile([1e-4, -1e-4], 4), config=FitConfig(bootstrap=100))
    assert row["slope_per_10x"] == pytest.approx(SLOPE, abs=1e-12)
    assert row["intercept"] == pytest.approx(INTERCEPT, abs=1e-10)
    assert row["r2"] > 0.9999 and row["interval_kind"] == "t"


def test_independent_runs_get_the_textbook_t_interval():
    # Every run its own pretraining run: least squares on all 12 runs, t on 10 dof.
    n = np.repeat(PAPER_SIZES, 3)
    y = _noisy_line(n, np.random.default_rng(3))
    row = fit_curve(n, y, config=FitConfig(bootstrap=1000), pretrain_run=np.arange(len(n)))
    assert row["slope_per_10x_low"] < SLOPE < row["slope_per_10x_high"]
    assert row["intercept_low"] < INTERCEPT < row["intercept_high"]
    ols = stats.linregress(np.log10(n), y)
    assert row["slope_per_10x"] == pytest.approx(ols.slope)
    textbook_width = 2 * stats.t.ppf(0.975, len(n) - 2) * ols.stderr
    assert row["slope_per_10x_high"] - row["slope_per_10x_low"] == pytest.approx(textbook_width, rel=1e-9)
    assert row["n_backbones"] == 12 and row["interval_dof"] == 10


@pytest.mark.parametrize("sizes, seeds", [(PAPER_SIZES, 3), (np.geomspace(1e6, 3e8, 8), 1)])
def test_interval_covers_the_true_slope_at_about_the_nominal_rate(sizes, seeds):
    rng = np.random.default_rng(7)
    n = np.repeat(sizes, seeds)
    config = FitConfig(bootstrap=300, ci_level=0.9)
    draws = 250
    hits = 0
    for _ in range(draws):
        row = fit_curve(n, _noisy_line(n, rng), config=config, pretrain_run=np.arange(len(n)))
        hits += row["slope_per_10x_low"] <= SLOPE <= row["slope_per_10x_high"]
    # 250 draws at 90%: the binomial standard error is ~1.9 points.
    assert 0.84 <= hits / draws <= 0.96


def test_seed_bootstrap_resamples_within_sizes_and_keeps_the_spread():
    n = np.repeat(PAPER_SIZES, 3)
    y = np.arange(12, dtype=float)
    kind, n_star, y_star = bootstrap_draws(n, y, 2000, np.random.default_rng(0))
    assert kind == "backbones" and (n_star == n).all()
    first_size = y_star[:, :3]
    # Values stay near their own size, and the resampled variance is not shrunk by (m - 1) / m.
    assert first_size.min() >= -1.3 and first_size.max() <= 3.3
    assert np.var(first_size, axis=1, ddof=0).mean() == pytest.approx(np.var([0, 1, 2], ddof=0), rel=0.1)


def test_expanded_level_widens_for_few_runs_only():
    assert expanded_level(0.95, 10) == pytest.approx(0.974, abs=1e-3)
    assert expanded_level(0.95, 10_000) == pytest.approx(0.95, abs=1e-3)


def test_prediction_and_inverse_agree_and_prediction_interval_covers_a_new_run():
    rng = np.random.default_rng(11)
    n = np.repeat(PAPER_SIZES, 3)
    row = fit_curve(n, _noisy_line(n, rng), config=FitConfig(bootstrap=500, predict_images=1e9, target=0.5))
    truth_at_1e9 = INTERCEPT + SLOPE * 9
    assert row["predicted_low"] < truth_at_1e9 < row["predicted_high"]
    model = FIT_MODELS["loglinear"]
    params = np.array([row["intercept"], row["slope_per_10x"]])
    assert model.predict(params, np.array([row["images_for_target"]]), None)[0] == pytest.approx(0.5)
    assert row["images_for_target_low"] < 10 ** ((0.5 - INTERCEPT) / SLOPE) < row["images_for_target_high"]


def test_flat_line_never_reaches_another_target():
    assert np.isinf(FIT_MODELS["loglinear"].inverse(np.array([0.3, 0.0]), 0.5, None)[0])
