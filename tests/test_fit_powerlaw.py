"""Saturating power law err = c + k * N^-alpha: exact optimum, known parameters, choice and inverse."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from analysis.config import FitConfig
from analysis.fit import _choose, fit_curve
from analysis.fit_models import FIT_MODELS, ErrorScale, error_scale

SIZES = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8, 3e8], 3)
FLOOR, COEFFICIENT, ALPHA = 0.3, 2.0, 0.25  # error floor 0.3: the metric saturates at 0.7
NOISE = 0.003


def _saturating(n, rng):
    return 1 - (FLOOR + COEFFICIENT * n ** -ALPHA) + rng.normal(0, NOISE, len(n))


def test_profile_fit_reaches_the_least_squares_optimum():
    rng = np.random.default_rng(5)
    model, scale = FIT_MODELS["powerlaw"], ErrorScale(1.0)
    for _ in range(5):
        y = _saturating(SIZES, rng)
        params = model.fit(SIZES[None], y[None], scale)[0]
        sse = ((y - model.predict(params, SIZES, scale)) ** 2).sum()
        # scipy's bounded least squares, started from the truth, as the reference optimum.
        reference = least_squares(lambda p: 1 - (p[0] + p[1] * SIZES ** -p[2]) - y, [FLOOR, COEFFICIENT, ALPHA],
                                  bounds=([0, 0, 1e-3], [np.inf, np.inf, 3]))
        assert sse <= 2 * reference.cost * (1 + 1e-5)
        assert params[2] == pytest.approx(reference.x[2], rel=2e-3)


def test_known_parameters_lie_in_their_intervals_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    config = FitConfig(bootstrap=200)
    draws, hits = 60, {"error_floor": 0, "coefficient": 0, "alpha": 0}
    for _ in range(draws):
        row = fit_curve(SIZES, _saturating(SIZES, rng), "powerlaw", config, metric="mIoU")
        for name, truth in zip(hits, (FLOOR, COEFFICIENT, ALPHA)):
            hits[name] += row[f"{name}_low"] <= truth <= row[f"{name}_high"]
    rates = {name: count / draws for name, count in hits.items()}
    assert all(0.8 <= rate <= 1.0 for rate in rates.values()), rates
    assert row["limit"] == pytest.approx(1 - row["error_floor"])


def test_saturating_data_choose_the_power_law_and_straight_data_the_line():
    rng = np.random.default_rng(2)
    config = FitConfig(bootstrap=200)
    saturating = _saturating(SIZES, rng)
    independent = np.arange(len(SIZES))  # the simulated noise is per run: each run its own pretraining run
    rows = [fit_curve(SIZES, saturating, name, config, metric="mIoU", pretrain_run=independent)
            for name in ("loglinear", "powerlaw")]
    _choose(rows, "both")
    assert [r["model"] for r in rows if r["chosen"]] == ["powerlaw"]
    assert rows[1]["heldout_error"] < rows[0]["heldout_error"] and rows[1]["aicc"] < rows[0]["aicc"]
    straight = 0.2 + 0.03 * np.log10(SIZES) + rng.normal(0, NOISE, len(SIZES))
    rows = [fit_curve(SIZES, straight, name, config, metric="AP", pretrain_run=independent)
            for name in ("loglinear", "powerlaw")]
    _choose(rows, "both")
    assert [r["model"] for r in rows if r["chosen"]] == ["loglinear"]


def test_choice_falls_back_to_aicc_without_a_heldout_error():
    rows = [{"model": "loglinear", "heldout_error": 0.01, "aicc": -10.0},
            {"model": "powerlaw", "heldout_error": float("nan"), "aicc": -20.0}]
    _choose(rows, "heldout")
    assert [r["chosen"] for r in rows] == [False, True] and rows[0]["chosen_by"] == "aicc"


def test_without_a_defined_aicc_the_model_with_fewer_parameters_is_kept():
    rows = [{"model": "loglinear", "heldout_error": 0.01, "aicc": -10.0},
            {"model": "powerlaw", "heldout_error": 0.001, "aicc": float("nan")}]
    _choose(rows, "both")
    assert [r["chosen"] for r in rows] == [True, False] and rows[0]["chosen_by"] == "fewest parameters"


def test_extrapolation_interval_and_data_needed_for_a_target():
    rng = np.random.default_rng(4)
    config = FitConfig(bootstrap=500, predict_images=1e10, target=0.68)
    row = fit_curve(SIZES, _saturating(SIZES, rng), "powerlaw", config, metric="mIoU")
    truth = 1 - (FLOOR + COEFFICIENT * 1e10 ** -ALPHA)
    assert row["predicted_low"] < truth < row["predicted_high"]
    needed = (COEFFICIENT / (1 - 0.68 - FLOOR)) ** (1 / ALPHA)
    assert row["images_for_target_low"] < needed < row["images_for_target_high"]
    beyond_floor = fit_curve(SIZES, _saturating(SIZES, rng), "powerlaw", FitConfig(bootstrap=100, target=0.8),
                             metric="mIoU")
    assert np.isinf(beyond_floor["images_for_target"])  # 0.8 lies above the fitted limit of ~0.7


@pytest.mark.parametrize("metric, values, bound", [("AP", [0.2, 0.5], 1.0), ("AP", [20.0, 55.0], 100.0),
                                                   ("val_loss", [2.5, 1.2], None)])
def test_error_scale_per_metric_kind(metric, values, bound):
    scale, problem = error_scale(metric, np.array(values))
    assert problem == "" and scale.bound == bound


def test_unbounded_metric_has_no_power_law():
    scale, problem = error_scale("FID", np.array([150.0, 90.0]))
    assert scale is None and "outside [0, 100]" in problem
