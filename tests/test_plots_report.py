"""`datascale plot`: seaborn figures (PNG + SVG) with fits and references, and results/report.md."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis.config import PlotConfig
from analysis.fit import read_fits
from analysis.plots import plot_scaling, read_reference, slope_label
from analysis.report import write_report
from analysis.results import read_results
from datascale.errors import DataError
from datascale.cli import main
from test_results_run_folders import make_run, make_study

EXAMPLE_REFERENCE = Path(__file__).parent / "data" / "example_reference.csv"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    runs = root / "runs"
    make_study(runs / "detection")
    make_study(runs / "segmentation", task="segmentation", metric="mIoU", intercept=0.5, slopes=(0.015, 0.025))
    make_run(runs, "scratch", metrics={"original": {"AP": 0.1}, "cleaned": {"AP": 0.09}}, init="random",
             subset_images=None)
    out = root / "results"
    assert main(["-q", "results", "collect", str(runs), "--out", str(out / "results.parquet")]) == 0
    assert main(["-q", "fit", "--results", str(out / "results.parquet"), "--set", "bootstrap=200"]) == 0
    return out


def test_cli_plot_writes_png_svg_and_a_self_contained_report(results_dir, capsys):
    assert main(["-q", "plot", "--results", str(results_dir / "results.parquet"),
                 "--reference", str(EXAMPLE_REFERENCE)]) == 0
    plots = results_dir / "plots"
    pngs, svgs = sorted(plots.glob("scaling_*.png")), sorted(plots.glob("scaling_*.svg"))
    assert [p.stem for p in pngs] == ["scaling_cleaned-resnet50-pretrained", "scaling_original-resnet50-pretrained"]
    assert (plots / "headline.png").is_file() and (plots / "headline.svg").is_file()
    assert [p.stem for p in svgs] == [p.stem for p in pngs]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    svg = svgs[1].read_text()
    # Text stays text in the SVG: legend slopes, the reference label and the random-init baseline.
    assert re.search(r"finetune: \+0\.0\d+ AP per 10x \[0\.0\d+, 0\.0\d+\]", svg)
    assert "example (not paper values)" in svg and "finetune: random init" in svg
    assert "detection: AP" in svg and "segmentation: mIoU" in svg
    report = (results_dir / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert "plots/headline.png" in links
    assert all((results_dir / link).is_file() and not Path(link).is_absolute() for link in links)
    # The answer first: the headline table is the first table, and the report stays short.
    assert report.index("## Headline") < report.index("| task | mode | metric |") < report.index("## What this")
    assert len(report.splitlines()) <= 150
    assert "## Original vs cleaned test sets" in report and "cleaned - original (mean)" in report
    assert "slope per 10x [95% CI]" in report
    # Not-fitted rows and per-class metrics are in the linked files, not the report.
    assert "without a positive subset_images" not in report and "`fit_excluded.csv`" in report
    assert "without a positive subset_images" in (results_dir / "fit_excluded.csv").read_text()
    assert (results_dir / "report_fits.csv").is_file() and (results_dir / "report_metrics.csv").is_file()
    assert "up to date" not in capsys.readouterr().out
    assert main(["-q", "plot", "--results", str(results_dir / "results.parquet"),
                 "--reference", str(EXAMPLE_REFERENCE)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_write_report_is_callable_on_its_own(results_dir):
    path = write_report(results_dir, figures=[], title="Demo study")
    text = path.read_text()
    assert path == results_dir / "report.md" and text.startswith("# Demo study")
    assert "| detection | finetune | AP |" in text and "| segmentation | frozen | mIoU |" in text


def test_reference_points_that_match_no_panel_are_reported(results_dir, tmp_path, caplog):
    reference = tmp_path / "ref.csv"
    reference.write_text("task,metric,mode,subset_images,value,label\npose,AP,finetune,1e8,0.6,elsewhere\n")
    with caplog.at_level(logging.WARNING, logger="analysis.plots"):
        written = plot_scaling(read_results(results_dir / "results.parquet"), read_fits(results_dir),
                               tmp_path / "plots", PlotConfig(formats=["png"]), read_reference(reference))
    assert len(written) == 2 and all(p.suffix == ".png" for p in written)
    assert "1 reference point(s) match no panel" in caplog.text


@pytest.mark.parametrize("content, message", [
    ("task,metric,value\ndetection,AP,0.3\n", "lacks columns mode, subset_images, label"),
    ("task,metric,mode,subset_images,value,label\ndetection,AP,finetune,lots,0.3,x\n", "rows 2 need a positive"),
])
def test_bad_reference_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "ref.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_reference(path)


def test_plot_without_fits_says_to_run_fit_first(results_dir, tmp_path, capsys):
    table = tmp_path / "results.parquet"
    table.write_bytes((results_dir / "results.parquet").read_bytes())
    assert main(["plot", "--results", str(table)]) == 1
    assert "run `datascale fit` first" in capsys.readouterr().err


def test_slope_label_reads_like_the_paper():
    fit = pd.Series({"mode": "finetune", "metric": "AP", "model": "loglinear", "slope_per_10x": 3.1,
                     "slope_per_10x_low": 2.5, "slope_per_10x_high": 3.7})
    assert slope_label(fit) == "finetune: +3.1 AP per 10x [2.5, 3.7]"


def test_headline_verdicts_follow_the_intervals_and_the_floor(results_dir):
    from analysis.headline import headline_table, verdict

    table = headline_table(read_results(results_dir / "results.parquet"), read_fits(results_dir).fits)
    assert set(zip(table["task"], table["mode"])) == {("detection", "frozen"), ("detection", "finetune"),
                                                      ("segmentation", "frozen"), ("segmentation", "finetune")}
    assert set(table["verdict"]) == {"grows"}  # every simulated curve rises with a tight interval
    detection = table[table["task"] == "detection"].set_index("mode")["random init"]
    assert detection["finetune"] == "0.100" and detection["frozen"] == "not run"  # one random-init run
    assert verdict(-0.01, 0.02, 0.3, 1.0) == "flat" and verdict(-0.03, -0.01, 0.3, 1.0) == "falls"
    assert verdict(0.001, 0.002, 0.01, 1.0) == "at floor"


def test_a_mode_whose_largest_subset_loses_to_random_init_gets_its_caveat_when_another_mode_ran_none(tmp_path):
    """Random init in one mode only: the other mode's "beats random" is unknown, not False, and the
    losing mode's caveat is still written (a numpy bool beside None once hid it)."""
    from analysis.headline import caveats, headline_table
    rows = [{"task": "detection", "metric": "AP", "test_set": "original", "mode": mode, "init": "pretrained",
             "subset_images": n, "value": 0.1 + 0.01 * i, "arch": "resnet50"}
            for mode in ("frozen", "finetune") for i, n in enumerate((1e5, 1e6, 1e7))]
    rows.append({"task": "detection", "metric": "AP", "test_set": "original", "mode": "frozen", "init": "random",
                 "subset_images": None, "value": 0.9, "arch": "resnet50"})
    table = headline_table(pd.DataFrame(rows), pd.DataFrame())
    by_mode = table.set_index("mode")
    assert by_mode.loc["frozen", "_beats_random"] is False and by_mode.loc["finetune", "_beats_random"] is None
    notes = caveats(table, pd.DataFrame(), pd.DataFrame(rows))
    assert any("detection (frozen)" in n and "does not beat random init" in n for n in notes)
    assert not any("detection (finetune)" in n and "random init" in n for n in notes)
