"""`datascale results collect`: run folders -> results.parquet, with every exclusion listed."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from analysis.results import COLUMNS, collect_runs, read_results, write_results
from datascale.errors import DataError
from datascale.cli import main
from test_results_run_folders import make_run, make_study


def _collect(tmp_path, *roots, extra=()):
    out = tmp_path / "results" / "results.parquet"
    code = main(["-q", "results", "collect", *map(str, roots), "--out", str(out), *extra])
    return code, out


def test_one_row_per_run_test_set_and_metric_with_lineage(tmp_path):
    make_run(tmp_path / "runs", "a", metrics={"original": {"AP": 0.31, "AP50": 0.52}, "cleaned": {"AP": 0.30}},
             seed=2, subset_images=30_000_000, mode="frozen", arch="resnet101", steps=500)
    code, out = _collect(tmp_path, tmp_path / "runs")
    assert code == 0
    table = read_results(out)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 3
    row = table[(table["test_set"] == "cleaned") & (table["metric"] == "AP")].iloc[0]
    assert (row["value"], row["mode"], row["arch"], row["seed"], row["subset_images"], row["steps"]) == \
        (0.30, "frozen", "resnet101", 2, 30_000_000, 500)
    assert row["run_dir"] == str((tmp_path / "runs" / "a").resolve())
    assert row["pretrain_run"] == "runs/pretrain/30M" and row["stage"] == "finetune"
    assert str(table["subset_images"].dtype) == "Int64"


def test_runs_in_progress_and_failed_runs_are_excluded_and_listed(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "done", metrics={"original": {"AP": 0.3}})
    make_run(runs, "running", metrics={"original": {"AP": 0.1}}, state="running")
    make_run(runs, "failed", metrics={"original": {"AP": 0.1}}, state="failed")
    code, out = _collect(tmp_path, runs)
    assert code == 0
    assert read_results(out)["run_dir"].str.endswith("done").all()
    excluded = pd.read_csv(out.parent / "excluded.csv").set_index("run_dir")["reason"]
    assert "no complete.json" in excluded[str((runs / "running").resolve())]
    assert "loss became NaN" in excluded[str((runs / "failed").resolve())]
    printed = capsys.readouterr().out
    assert "running: in progress" in printed and "failed: failed: loss became NaN" in printed


def test_bad_metrics_file_and_run_without_lineage_are_counted_not_lost(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "good", metrics={"original": {"AP": 0.3}})
    (make_run(runs, "not-json", metrics={}) / "metrics.json").write_text("{'AP': 0.3")
    make_run(runs, "no-lineage-keys", metrics={"original": {"AP": 0.3}}, lineage={})
    (runs / "no-config").mkdir()
    (runs / "no-config" / "metrics.json").write_text('{"metrics": {"original": {"AP": 0.3}}}')
    make_run(runs, "nan-metric", metrics={"original": {"AP": "n/a", "AP50": 0.5}})
    collection = collect_runs([runs], progress=False)
    reasons = {e["run_dir"].rsplit("/", 1)[-1] + ":" + e["metric"]: e["reason"] for e in collection.excluded}
    assert "not valid JSON" in reasons["not-json:"]
    assert "lineage" in reasons["no-lineage-keys:"]
    assert "without config.yaml" in reasons["no-config:"]
    assert "not a finite number" in reasons["nan-metric:AP"]
    assert sorted((r["run_dir"].rsplit("/", 1)[-1], r["metric"]) for r in collection.rows) == \
        [("good", "AP"), ("nan-metric", "AP50")]
    assert collection.runs_seen == 5


def test_missing_or_empty_runs_folder_is_a_clear_error(tmp_path, capsys):
    code, _ = _collect(tmp_path, tmp_path / "nowhere")
    assert code == 1
    assert "runs folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code, out = _collect(tmp_path, tmp_path / "empty")
    assert code == 1 and not out.exists()
    assert "no run folders under" in capsys.readouterr().err


def test_other_stages_are_not_runs_and_overlapping_roots_read_each_run_once(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "finetune", "a", metrics={"original": {"AP": 0.3}})
    make_run(runs, "subset-10M", metrics={}, stage="subsets")
    collection = collect_runs([runs, runs / "finetune"], progress=False)
    assert len(collection.rows) == 1 and collection.excluded == [] and collection.runs_seen == 1


def test_merge_keeps_other_runs_and_replaces_rescanned_ones(tmp_path):
    make_study(tmp_path / "a", sizes=(10_000_000, 30_000_000), seeds=(0,), modes=("frozen",), slopes=(0.02,))
    make_study(tmp_path / "b", sizes=(10_000_000,), seeds=(0, 1), modes=("finetune",), slopes=(0.03,))
    assert _collect(tmp_path, tmp_path / "a")[0] == 0
    code, out = _collect(tmp_path, tmp_path / "b", extra=["--merge"])
    assert code == 0 and len(read_results(out)) == 2 * 2 + 2 * 2
    # A run that was re-started leaves the table when its folder is collected again.
    restarted = next((tmp_path / "b").iterdir())
    (restarted / "complete.json").unlink()
    _collect(tmp_path, tmp_path / "b", extra=["--merge"])
    table = read_results(out)
    assert len(table) == 6 and str(restarted) not in set(table["run_dir"])
    assert not table.duplicated(["run_dir", "test_set", "metric"]).any()
    # Without --merge the table holds exactly what was collected.
    _collect(tmp_path, tmp_path / "a")
    assert len(read_results(out)) == 4


def test_write_results_records_lineage_beside_the_table(tmp_path):
    make_run(tmp_path / "runs", "a", metrics={"original": {"AP": 0.3}})
    table, excluded = write_results(collect_runs([tmp_path / "runs"], progress=False),
                                    tmp_path / "out" / "results.parquet", roots=[tmp_path / "runs"])
    record = yaml.safe_load((tmp_path / "out" / "collect.yaml").read_text())
    assert record["stage"] == "results" and record["rows"] == 1
    assert record["config"]["runs_dirs"] == [str((tmp_path / "runs").resolve())]


@pytest.mark.parametrize("content", [b"not parquet", b""])
def test_unreadable_results_table_is_a_clear_error(tmp_path, content):
    path = tmp_path / "results.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a readable Parquet table"):
        read_results(path)


def test_results_group_lists_its_actions(capsys):
    assert main(["results"]) == 2
    assert "collect" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    top_help = capsys.readouterr().out
    assert all(name in top_help for name in ("results", "fit", "plot"))


def test_where_filters_accept_alternatives():
    import pandas as pd

    from analysis.results import select
    from datascale.errors import DataError

    frame = pd.DataFrame({"metric": ["AP", "AP50", "mIoU", "IoU/cat"], "value": [1, 2, 3, 4]})
    assert select(frame, ["metric=AP|mIoU"])["value"].tolist() == [1, 3]
    assert select(frame, ["metric=AP50"])["value"].tolist() == [2]
    with pytest.raises(DataError, match="no row has metric"):
        select(frame, ["metric=AP75|PQ"])
