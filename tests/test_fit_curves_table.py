"""`datascale fit` on a results table: one curve per setting, honest exclusions, files and printout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.config import FitConfig
from analysis.fit import CURVE_KEYS, fit_table, read_fits
from analysis.results import COLUMNS, to_frame
from datascale.errors import DataError
from datascale.cli import main
from test_results_run_folders import make_run, make_study

SIZES = (10_000_000, 30_000_000, 100_000_000, 300_000_000)


def _rows(sizes=SIZES, seeds=(0, 1), arch="resnet50", mode="finetune", value=None, metric="AP", init="pretrained"):
    rng = np.random.default_rng(len(sizes))
    return [{"task": "detection", "metric": metric, "test_set": "original", "mode": mode, "arch": arch,
             "init": init, "subset_images": size, "seed": seed, "run_dir": f"{arch}-{mode}-{size}-{seed}",
             "steps": 100, "num_classes": 10,
             "value": value if value is not None else 0.2 + 0.03 * np.log10(size) + rng.normal(0, 0.003)}
            for size in sizes for seed in seeds]


def _fit(rows, **config):
    return fit_table(to_frame(rows), FitConfig(bootstrap=100, **config), progress=False)


def test_each_mode_and_architecture_is_its_own_curve():
    output = _fit(_rows() + _rows(mode="frozen") + _rows(arch="resnet101"))
    curves = output.fits[output.fits["model"] == "loglinear"][["mode", "arch"]]
    assert sorted(map(tuple, curves.values)) == [("finetune", "resnet101"), ("finetune", "resnet50"),
                                                 ("frozen", "resnet50")]
    assert (output.fits.groupby(["mode", "arch"])["chosen"].sum() == 1).all()
    # Four sizes: only the log-linear model is fitted (the power law needs six), every run once.
    assert len(output.points) == 3 * len(SIZES) * 2


def test_runs_without_an_architecture_are_not_mixed_into_other_curves():
    rows = _rows() + _rows(arch=None)
    output = _fit(rows)
    assert output.fits["arch"].isna().sum() == 1  # its own curve, not dropped or merged
    assert (output.fits.loc[output.fits["arch"] == "resnet50", "n_runs"] == len(SIZES) * 2).all()


def test_too_few_sizes_and_constant_values_are_reported_not_fitted():
    output = _fit(_rows(sizes=SIZES[:2]) + _rows(mode="frozen", value=0.25))
    assert output.fits.empty
    reasons = dict(zip(output.excluded["mode"], output.excluded["reason"]))
    assert "only 2 data size(s)" in reasons["finetune"] and "at least 3" in reasons["finetune"]
    assert "all 8 values equal 0.25" in reasons["frozen"]


@pytest.mark.parametrize("n_sizes", [3, 4, 5])
def test_fewer_than_six_sizes_fit_the_line_but_not_the_three_parameter_power_law(n_sizes):
    output = _fit(_rows(sizes=np.geomspace(1e7, 3e8, n_sizes).astype(int)))
    assert list(output.fits["model"]) == ["loglinear"] and output.fits["chosen"].all()
    assert output.fits["chosen_by"].iloc[0] == "only model"
    assert f"fitted only on at least 6 data sizes; this curve has {n_sizes}" in output.excluded.iloc[0]["reason"]
    assert output.excluded.iloc[0]["model"] == "powerlaw"


def test_random_init_rows_are_counted_off_the_size_axis():
    rows = _rows() + [{**_rows()[0], "init": "random", "subset_images": None, "run_dir": "scratch"}]
    output = _fit(rows)
    excluded = output.excluded[output.excluded["init"] == "random"].iloc[0]
    assert excluded["reason"].startswith("1 row(s) without a positive subset_images")


def test_mixed_step_counts_along_a_curve_are_noted():
    rows = _rows()
    rows[0]["steps"] = 999
    note = _fit(rows).fits["note"].iloc[0]
    assert "steps differs along the curve" in note


def test_missing_columns_and_bad_filters_are_clear_errors():
    with pytest.raises(DataError, match="lacks columns arch"):
        fit_table(to_frame(_rows()).drop(columns=["arch"]), FitConfig(bootstrap=100), progress=False)
    with pytest.raises(DataError, match="no row has task='detecton'; present: detection"):
        _fit(_rows(), where=["task=detecton"])


@pytest.fixture
def results_dir(tmp_path):
    runs = tmp_path / "runs"
    make_study(runs)
    make_run(runs, "scratch", metrics={"original": {"AP": 0.1}}, init="random", subset_images=None)
    out = tmp_path / "results"
    assert main(["-q", "results", "collect", str(runs), "--out", str(out / "results.parquet")]) == 0
    return out


def test_cli_fit_writes_files_prints_the_table_and_skips_when_up_to_date(results_dir, capsys):
    args = ["-q", "fit", "--results", str(results_dir / "results.parquet"), "--predict", "1e9",
            "--target", "0.3", "--set", "bootstrap=200"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # Not fitted: the random-init run, and the power law of each of the 4 curves (4 sizes < 6).
    assert "slope per 10x [95% CI]" in printed and "at 1e+09 images" in printed and "not fitted (5)" in printed
    fits = pd.read_csv(results_dir / "fits.csv")
    assert len(fits) == 2 * 2  # modes x test sets, log-linear only
    assert (fits.groupby(["mode", "test_set"])["chosen"].sum() == 1).all()
    assert fits["predict_images"].eq(1e9).all() and fits["target"].eq(0.3).all()
    record = yaml.safe_load((results_dir / "fit.yaml").read_text())
    assert record["stage"] == "fit" and record["config"]["bootstrap"] == 200
    assert set(record["inputs"]) == {"results"}
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(args + ["--force"]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert len(read_fits(results_dir).points) == len(fits) * len(SIZES) * 3  # every run, per model


def test_cli_fit_bad_inputs_exit_with_a_message(results_dir, capsys):
    assert main(["fit", "--results", str(results_dir / "missing.parquet")]) == 1
    assert "results table not found" in capsys.readouterr().err
    assert main(["fit", "--results", str(results_dir / "results.parquet"), "--set", "modles=powerlaw"]) == 2
    assert "did you mean 'models'" in capsys.readouterr().err
    assert main(["fit", "--results", str(results_dir / "results.parquet"), "--set", "models=[cubic]"]) == 2
    assert "unknown model 'cubic'" in capsys.readouterr().err


def test_every_curve_key_is_a_results_column():
    assert set(CURVE_KEYS) <= set(COLUMNS)


def test_fit_on_a_table_whose_runs_were_all_excluded_says_so(tmp_path, capsys):
    make_run(tmp_path / "runs", "still-training", metrics={"original": {"AP": 0.2}}, state="running")
    table = tmp_path / "results" / "results.parquet"
    assert main(["-q", "results", "collect", str(tmp_path / "runs"), "--out", str(table)]) == 0
    assert main(["-q", "fit", "--results", str(table)]) == 1
    assert "has no rows: every run was excluded" in capsys.readouterr().err
