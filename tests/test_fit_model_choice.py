"""Small-sample model choice and honest inputs/outputs: AICc, the size rule, lack of fit, bounds, NaN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.config import MODEL_CHOICE_RULE, FitConfig
from analysis.fit import _choose, aicc, fit_curve, fit_table, pretraining_points
from analysis.fit_models import FIT_MODELS, metric_range
from datascale.errors import DataError
from datascale.cli import main
from test_fit_coverage import simulate


def _both(n, y, backbone, metric="AP", config=None):
    config = config or FitConfig(bootstrap=50)
    rows = [fit_curve(n, y, name, config, metric=metric, pretrain_run=backbone) for name in ("loglinear", "powerlaw")]
    _choose(rows, config.choose_by)
    return rows


def test_aicc_is_the_small_sample_aic_on_backbone_means_and_undefined_on_few_points():
    n, y, backbone = simulate(np.random.default_rng(0), 2, 0.01, 0.003)  # 4 sizes x 2 backbones x 2 seeds
    points = pretraining_points(n, y, backbone)
    model = FIT_MODELS["loglinear"]
    params = model.fit(points.n[None], points.y[None], None)[0]
    rss = ((points.y - model.predict(params, points.n, None)) ** 2).sum()
    big_n, k = 8, 3  # 8 backbones (not 16 runs); intercept, slope and the noise variance
    expected = big_n * np.log(rss / big_n) + 2 * k + 2 * k * (k + 1) / (big_n - k - 1)
    assert aicc(model, params, points, None) == pytest.approx(expected)
    few = pretraining_points(n[n < 3e8], y[n < 3e8])  # 3 sizes, one backbone each: n = 3 <= K + 1
    assert np.isnan(aicc(model, params, few, None))


@pytest.mark.parametrize("n_sizes", [4, 5])
def test_the_power_law_is_not_fitted_on_fewer_than_six_sizes(n_sizes):
    n, y, backbone = simulate(np.random.default_rng(1), 2, 0.01, 0.003, sizes=np.geomspace(1e7, 3e8, n_sizes))
    with pytest.raises(DataError, match=f"fitted only on at least 6 data sizes; this curve has {n_sizes}"):
        fit_curve(n, y, "powerlaw", FitConfig(bootstrap=50), metric="AP", pretrain_run=backbone)
    assert "3-parameter power law: 6" in MODEL_CHOICE_RULE


def test_cli_fit_help_states_the_model_choice_rule(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "only from k + 3 sizes (the 3-parameter power law: 6)" in text and "AICc" in text
    assert "n_backbones - 2 degrees of freedom" in text


def test_a_log_linear_truth_rarely_chooses_the_power_law():
    """8 sizes, 2 backbones per size, pretraining variance dominating: the default rule ("both")."""
    rng = np.random.default_rng(2)
    studies, power_law = 150, 0
    for _ in range(studies):
        n, y, backbone = simulate(rng, 2, 0.01, 0.003, sizes=np.geomspace(1e6, 3e8, 8))
        rows = _both(n, y, backbone)
        assert rows[0]["chosen_by"] == "both"
        power_law += rows[1]["chosen"]
    assert power_law / studies <= 0.06, power_law / studies


def test_a_clearly_saturating_truth_chooses_the_power_law():
    rng = np.random.default_rng(3)
    n, y, backbone = simulate(rng, 2, 0.001, 0.001, sizes=np.geomspace(1e6, 3e8, 8),
                              truth=lambda n: 1 - (0.3 + 2.0 * n ** -0.25))
    rows = _both(n, y, backbone, metric="mIoU")
    assert [r["model"] for r in rows if r["chosen"]] == ["powerlaw"]
    assert rows[0]["lack_of_fit_p"] < 0.01  # the line's lack of fit is plain against pure error


def test_lack_of_fit_test_holds_its_level_on_a_straight_truth_and_is_absent_without_replication():
    rng = np.random.default_rng(4)
    studies, rejected = 300, 0
    for _ in range(studies):
        n, y, backbone = simulate(rng, 2, 0.01, 0.003)
        row = fit_curve(n, y, config=FitConfig(bootstrap=50), pretrain_run=backbone)
        assert (row["lack_of_fit_dof"], row["pure_error_dof"]) == (2, 4)
        rejected += row["lack_of_fit_p"] < 0.05
    assert rejected / studies <= 0.09, rejected / studies
    n, y, backbone = simulate(rng, 1, 0.01, 0.003)
    row = fit_curve(n, y, config=FitConfig(bootstrap=50), pretrain_run=backbone)
    assert np.isnan(row["lack_of_fit_p"]) and row["pure_error_dof"] == 0
    assert "lack of fit cannot be told from run-to-run noise" in row["note"]


@pytest.mark.parametrize("metric, values, expected", [("AP", [0.2, 0.9], (0.0, 1.0)), ("mIoU", [20, 60], (0.0, 100.0)),
                                                      ("val_loss", [2.0, 1.0], (0.0, np.inf)),
                                                      ("score", [-3.0, 2.0], (-np.inf, np.inf))])
def test_metric_range(metric, values, expected):
    assert metric_range(metric, np.array(values)) == expected


def test_bounded_metrics_never_predict_outside_their_range():
    rng = np.random.default_rng(5)
    n, y, backbone = simulate(rng, 2, 0.01, 0.003, truth=lambda n: 0.6 + 0.1 * np.log10(n / 1e7))
    config = FitConfig(bootstrap=200, predict_images=1e12, target=1.2)
    row = fit_curve(n, y, config=config, metric="AP", pretrain_run=backbone)
    assert 0 <= row["predicted_low"] <= row["predicted"] <= row["predicted_high"] <= 1
    assert row["predicted_high"] == 1.0 and "clipped to the metric's range [0, 1]" in row["note"]
    assert np.isinf(row["images_for_target"])  # AP never reaches 1.2
    n6, y6, b6 = simulate(rng, 2, 0.01, 0.003, sizes=np.geomspace(1e6, 3e8, 6),
                          truth=lambda n: 1 - (0.05 + 2.0 * n ** -0.25))
    table = pd.DataFrame({"task": "detection", "metric": "AP", "test_set": "original", "mode": "finetune",
                          "arch": "resnet50", "init": "pretrained", "subset_images": n6.astype(int),
                          "seed": 0, "run_dir": [f"r{i}" for i in range(len(n6))], "pretrain_run": b6, "value": y6})
    output = fit_table(table, FitConfig(bootstrap=100, predict_images=1e13), progress=False)
    assert set(output.fits["model"]) == {"loglinear", "powerlaw"}
    assert output.curves["band_high"].max() <= 1 and output.curves["band_low"].min() >= 0
    assert (output.fits["predicted_high"] <= 1).all()


def test_nan_and_infinite_values_are_refused_with_the_rows_named():
    n, y, backbone = simulate(np.random.default_rng(6), 1, 0.01, 0.003)
    y[3], n[5] = np.nan, np.inf
    with pytest.raises(DataError, match=r"2 row\(s\) .* NaN or infinite: row 3, row 5"):
        fit_curve(n, y, pretrain_run=backbone)
    table = pd.DataFrame({"task": "detection", "metric": "AP", "test_set": "original", "mode": "finetune",
                          "arch": "resnet50", "init": "pretrained", "subset_images": [10**7, 10**8, 10**9] * 2,
                          "seed": 0, "run_dir": [f"runs/ft{i}" for i in range(6)], "pretrain_run": None,
                          "value": [0.2, 0.3, np.inf, 0.25, float("nan"), 0.4]})
    with pytest.raises(DataError, match=r"runs/ft2 \[original/AP\], runs/ft4 \[original/AP\]"):
        fit_table(table, FitConfig(bootstrap=50), progress=False)

