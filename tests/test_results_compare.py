"""`datascale results compare`: several studies' headlines side by side (the three-world-seed table)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.compare import compare_values, summary_table, t_interval
from datascale.cli import main
from datascale.errors import DataError
from test_results_run_folders import make_run, make_study

SIZES = (1e7, 3e7, 1e8, 3e8)
TRUE_SLOPES = {"world-a": (0.020, 0.030), "world-b": (0.026, 0.036), "world-c": (0.014, 0.024)}


def _study(root, name: str, slopes, random_value: dict, rng_seed: int):
    """One study folder: frozen/finetune detection runs following known slopes, random init, fit."""
    runs = root / name / "runs"
    make_study(runs, sizes=SIZES, slopes=slopes, rng_seed=rng_seed)
    for mode, value in random_value.items():
        make_run(runs, f"random-{mode}", mode=mode, metrics={"original": {"AP": value}}, init="random",
                 subset_images=None)
    results = root / name / "results"
    assert main(["-q", "results", "collect", str(runs), "--out", str(results / "results.parquet")]) == 0
    assert main(["-q", "fit", "--results", str(results / "results.parquet"), "--set", "bootstrap=200"]) == 0
    return root / name


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    # The largest subset (3e8) scores 0.20 + slope * log10(30) ~ 0.23-0.25; world c's frozen random
    # init is rigged above it, so "largest beats random" must read 2/3 for frozen.
    randoms = {"world-a": {"frozen": 0.05, "finetune": 0.10}, "world-b": {"frozen": 0.05, "finetune": 0.10},
               "world-c": {"frozen": 0.40, "finetune": 0.10}}
    return [_study(root, name, TRUE_SLOPES[name], randoms[name], seed)
            for seed, name in enumerate(TRUE_SLOPES)]


def test_per_study_values_recover_each_worlds_slope_and_random_init(studies):
    values = compare_values(studies)
    assert sorted(values["study"].unique()) == sorted(TRUE_SLOPES)
    for _, row in values.iterrows():
        truth = TRUE_SLOPES[row["study"]][("frozen", "finetune").index(row["mode"])]
        assert abs(row["slope"] - truth) < 0.006, row.to_dict()  # ~4 standard errors
        assert 0 < row["slope_low"] < row["slope"] < row["slope_high"] and row["verdict"] == "grows"
    frozen_c = values[(values["study"] == "world-c") & (values["mode"] == "frozen")].iloc[0]
    assert frozen_c["beats_random"] is not None and not frozen_c["beats_random"]
    assert math.isclose(frozen_c["random"], 0.40)


def test_cli_summary_counts_what_held_in_how_many_studies(studies, tmp_path, capsys):
    out = tmp_path / "worlds.md"
    assert main(["-q", "results", "compare", *map(str, studies), "--names", "w0,w1,w2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert "# Studies compared: w0, w1, w2" in text
    summary = text.split("## Across studies")[1].split("## Per study")[0]
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in summary.splitlines() if line.startswith("| detection")}
    assert rows["frozen"][3] == "2/3" and rows["finetune"][3] == "3/3"      # largest beats random
    assert rows["frozen"][4] == "3/3" and rows["finetune"][4] == "3/3"      # slope interval above 0
    per_study = text.split("## Per study")[1]
    assert per_study.count("| detection |") == 6 and "| w2 |" in per_study


def test_mean_slope_interval_is_over_the_studies_and_covers_their_mean(studies):
    summary = summary_table(compare_values(studies)).set_index("mode")
    cell = summary.loc["frozen", "mean slope per 10x [95% CI over studies]"]
    mean, low, high = (float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split())
    true_mean = float(np.mean([s[0] for s in TRUE_SLOPES.values()]))
    assert low < true_mean < high
    # Three worlds spread 0.014-0.026: the interval over studies must be far wider than one study's.
    assert high - low > 0.02


def test_t_interval_matches_the_textbook_and_needs_two_values():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 4.302652729911275 / math.sqrt(3), rel_tol=1e-9)
    mean, low, high = t_interval([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)


def test_convergence_counts_only_runs_known_to_have_converged():
    values = pd.DataFrame({
        "task": ["pose"] * 3, "mode": ["frozen"] * 3, "study": ["a", "b", "c"], "largest": [0.2, 0.21, 0.19],
        "slope": [0.04, 0.03, 0.05], "slope_low": [0.01, -0.01, 0.02], "slope_high": [0.07, 0.07, 0.08],
        "beats_random": [True, True, None], "converged": [True, "False", None]})
    row = summary_table(values).iloc[0]
    assert row["largest converged"] == "1/3 (1 unknown)"
    assert row["slope interval above 0"] == "2/3"
    assert row["largest beats random"] == "2/2"       # study c ran no random init


def test_unfitted_slopes_and_missing_random_init_are_named_not_counted():
    values = pd.DataFrame({
        "task": ["pose"] * 3, "mode": ["frozen"] * 3, "study": ["a", "b", "c"], "largest": [0.2, 0.21, 0.19],
        "slope": [0.04, math.nan, 0.05], "slope_low": [0.01, math.nan, 0.02], "slope_high": [0.07, math.nan, 0.08],
        "beats_random": [None, None, None], "converged": [None, None, None]})
    row = summary_table(values).iloc[0]
    assert row["largest beats random"] == "no random init"
    assert row["mean slope per 10x [95% CI over studies]"].endswith("(2 of 3 fitted)")
    assert "nan" not in row["mean slope per 10x [95% CI over studies]"]
    one = summary_table(values.assign(slope=[0.04, math.nan, math.nan])).iloc[0]
    assert one["mean slope per 10x [95% CI over studies]"] == "+0.040 (one study)"
    none = summary_table(values.assign(slope=[math.nan] * 3)).iloc[0]
    assert none["mean slope per 10x [95% CI over studies]"] == "not fitted"


def test_bad_folders_and_names_are_clear_errors(studies, tmp_path):
    with pytest.raises(DataError, match="no results.parquet"):
        compare_values([tmp_path])
    with pytest.raises(DataError, match="2 names for 3 studies"):
        compare_values(studies, names=["a", "b"])
    with pytest.raises(DataError, match="names repeat"):
        compare_values(studies, names=["a", "b", "a"])
    with pytest.raises(DataError, match="both named 'world-a'"):
        compare_values([studies[0], studies[0] / "results"])
