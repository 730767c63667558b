"""`datascale fit` takes a researcher's own minimal table, CSV or Parquet, and fills the rest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.fit import read_fits
from analysis.results import read_results
from datascale.cli import main
from datascale.errors import DataError


def _minimal(path, rows_per_size=2):
    rng = np.random.default_rng(0)
    rows = [{"task": "detection", "metric": "AP", "subset_images": n,
             "value": 0.30 + 0.05 * np.log10(n / 1e7) + rng.normal(0, 0.003)}
            for n in (10_000_000, 30_000_000, 100_000_000, 300_000_000) for _ in range(rows_per_size)]
    rows.append({"task": "detection", "metric": "AP", "subset_images": 0, "value": 0.2})  # random init
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("name", ["mine.csv", "mine.parquet"])
def test_a_minimal_table_is_filled_and_fitted(tmp_path, name, capsys):
    table = _minimal(tmp_path / name)
    filled = read_results(table)
    assert set(filled["test_set"]) == {"original"} and set(filled["mode"]) == {"finetune"}
    assert filled["init"].tolist()[-1] == "random" and filled["subset_images"].isna().tolist()[-1]
    out = tmp_path / "fits"
    assert main(["fit", "--results", str(table), "--out", str(out), "--predict", "1e15"]) == 0
    fits = read_fits(out).fits
    row = fits[(fits["model"] == "loglinear") & (fits["init"] == "pretrained")].iloc[0]
    assert row["slope_per_10x_low"] < 0.05 < row["slope_per_10x_high"]
    # Extrapolating a bounded metric (AP) far out stays inside [0, 1].
    assert 0 <= row["predicted_low"] <= row["predicted"] <= row["predicted_high"] <= 1


def test_a_table_without_the_minimal_columns_is_refused_naming_them(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("task,value\ndetection,0.3\n")
    with pytest.raises(DataError, match="lacks columns metric, subset_images: a results table needs"):
        read_results(path)
    path.write_text("task,metric,subset_images,value\ndetection,AP,1000,high\n")
    with pytest.raises(DataError, match="rows 2 have a value that is not a number"):
        read_results(path)
