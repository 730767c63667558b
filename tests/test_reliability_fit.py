"""`datascale fit` refuses NaN or infinite results rows, naming them (docs/reliability.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datascale.cli import main


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fit_cli_refuses_nonfinite_rows_and_names_them(tmp_path, capsys, bad):
    results = tmp_path / "results"
    results.mkdir()
    sizes = [10**6, 10**7, 10**8, 10**9] * 2
    table = pd.DataFrame({"task": "detection", "metric": "AP", "test_set": "original", "mode": "finetune",
                          "arch": "resnet50", "init": "pretrained", "subset_images": sizes, "seed": 0,
                          "run_dir": [f"runs/ft{i}" for i in range(8)], "pretrain_run": None,
                          "value": [0.2, 0.3, bad, 0.45, 0.21, 0.31, 0.39, 0.44], "steps": 100,
                          "subset_name": [str(s) for s in sizes], "num_classes": 10, "stage": "finetune"})
    table.to_parquet(results / "results.parquet")
    code = main(["fit", "--results", str(results / "results.parquet")])
    err = capsys.readouterr().err
    assert code == 1 and "NaN or infinite" in err and "runs/ft2" in err, err
    assert "Traceback" not in err
    assert not (results / "fits.csv").exists()
