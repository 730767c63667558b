"""The README's demo section is copied from a real report by `make readme`, never typed."""

from __future__ import annotations


import pytest

from analysis.readme import BEGIN, END, update_readme
from datascale.errors import DataError


def test_demo_section_is_the_reports_headline_with_links_that_resolve(tmp_path):
    from test_results_run_folders import make_run, make_study
    from datascale.cli import main

    study = tmp_path / "study"
    make_study(study / "runs" / "detection")
    make_run(study / "runs", "scratch", metrics={"original": {"AP": 0.1}}, init="random", subset_images=None)
    results = study / "results"
    for argv in (["results", "collect", str(study / "runs"), "--out", str(results / "results.parquet")],
                 ["fit", "--results", str(results / "results.parquet"), "--set", "bootstrap=100"],
                 ["plot", "--results", str(results / "results.parquet"), "--set", "formats=[png]"]):
        assert main(["-q", *argv]) == 0
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## What the demo shows\n\n{BEGIN}\nold typed numbers\n{END}\n\n## Next\n")
    update_readme(results / "report.md", readme)
    text = readme.read_text()
    block = text.split(BEGIN)[1].split(END)[0]
    assert "old typed numbers" not in block and "#### Headline" in block and "| detection | finetune | AP |" in block
    assert "](study/results/plots/headline.png)" in block and (tmp_path / "study/results/plots/headline.png").is_file()
    assert text.startswith("# x") and text.rstrip().endswith("## Next")
    update_readme(results / "report.md", readme)  # idempotent: one block, not two
    assert readme.read_text().count(BEGIN) == 1


def test_missing_markers_or_report_are_clear_errors(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    report = tmp_path / "report.md"
    report.write_text("## Headline\n\n| a |\n\n## What this study does not show\n\n- x\n")
    with pytest.raises(DataError, match="lacks the markers"):
        update_readme(report, readme)
    with pytest.raises(DataError, match="run `make study` first"):
        update_readme(tmp_path / "none.md", readme)


def test_a_named_block_is_filled_and_the_demo_block_left_alone(tmp_path):
    from analysis.readme import markers
    report = tmp_path / "report.md"
    report.write_text("Generated 2026-12-02 10:00 UTC from 3 runs\n\n## Headline\n\n| findings row |\n\n"
                      "## What this study does not show\n\n- y\n")
    begin, end = markers("findings")
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\ndemo text\n{END}\n\n{begin}\nold\n{end}\n")
    update_readme(report, readme, "findings")
    text = readme.read_text()
    assert "demo text" in text and "old" not in text.split(begin)[1]
    assert "| findings row |" in text.split(begin)[1].split(end)[0]
    assert "`datascale study studies/findings`" in text.split(begin)[1]
