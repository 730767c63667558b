"""One report section per varied study axis: slopes per value (Fig. 5 / Tables 4-5) and the class
ablation as paired values at equal images (Table 6)."""

from __future__ import annotations

import math

import numpy as np

from datascale.cli import main
from test_results_run_folders import make_run

SIZES = (10_000_000, 30_000_000, 100_000_000, 300_000_000)


def _study(root, rng=np.random.default_rng(0)):
    """Two architectures (the wider one gains more per 10x) and two label spaces (no effect)."""
    for arch, slope in (("resnet50", 0.02), ("resnet152", 0.04)):
        for classes in ("all", "941 classes"):
            for size in SIZES:
                for seed in (0, 1):
                    value = 0.2 + slope * math.log10(size / 1e7) + rng.normal(0, 0.002)
                    lineage = {"task": "detection", "mode": "finetune", "seed": seed, "arch": arch,
                               "init": "pretrained", "subset_images": size, "steps": 100, "classes": classes,
                               "budget": "steps:1000", "pretrain_run": f"pre/{arch}-{classes}-{size}-{seed}",
                               "pretrain_seed": seed}
                    make_run(root, f"{arch}-{classes.replace(' ', '')}-{size}-{seed}", metrics={"original": {"AP": value}},
                             lineage=lineage, arch=arch)


def _analyse(tmp_path):
    """collect, fit and plot the runs under tmp_path/runs; (results folder, report.md text)."""
    results = tmp_path / "results"
    for argv in (["results", "collect", str(tmp_path / "runs"), "--out", str(results / "results.parquet")],
                 ["fit", "--results", str(results / "results.parquet")],
                 ["plot", "--results", str(results / "results.parquet"), "--set", "formats=[png]"]):
        assert main(["-q", *argv]) == 0
    return results, (results / "report.md").read_text()


def test_report_has_a_section_per_varied_axis_with_the_papers_reading(tmp_path):
    _study(tmp_path / "runs")
    results, report = _analyse(tmp_path)
    assert "## Model capacity (`arch`)" in report and "## Number of classes (`classes`)" in report
    assert "## Training budget" not in report  # one budget: not an axis of this study
    capacity = report.split("## Model capacity")[1].split("##")[0]
    slopes = {arch: float(line.split("|")[4].split("[")[0]) for line in capacity.splitlines()
              for arch in ("resnet50", "resnet152") if f"| {arch} |" in line}
    assert slopes["resnet152"] > slopes["resnet50"] + 0.01  # the wider model gains more per 10x
    classes = report.split("## Number of classes")[1]
    assert "941 classes - all" in classes and "no clear change" in classes
    assert (results / "plots" / "axis_arch.png").is_file() and (results / "plots" / "axis_classes.png").is_file()
    # The headline shows the main setting only (the most common value of each axis).
    headline = report.split("## Headline")[1].split("##")[0]
    assert headline.count("| detection |") == 1


def test_curriculum_axis_gets_its_slope_section(tmp_path):
    rng = np.random.default_rng(1)
    for curriculum, slope in (("none", 0.03), ("efficienttrain", 0.03)):
        for size in SIZES:
            for seed in (0, 1):
                value = 0.2 + slope * math.log10(size / 1e7) + rng.normal(0, 0.002)
                lineage = {"task": "detection", "mode": "finetune", "seed": seed, "arch": "resnet50",
                           "init": "pretrained", "subset_images": size, "steps": 100, "classes": "all",
                           "budget": "steps:1000", "curriculum": curriculum, "pretrain_seed": seed,
                           "pretrain_run": f"pre/{curriculum}-{size}-{seed}"}
                make_run(tmp_path / "runs", f"{curriculum}-{size}-{seed}", metrics={"original": {"AP": value}},
                         lineage=lineage, arch="resnet50")
    results, report = _analyse(tmp_path)
    section = report.split("## Pretraining curriculum (`curriculum`)")[1].split("##")[0]
    assert "| efficienttrain |" in section and "| none |" in section
    assert (results / "plots" / "axis_curriculum.png").is_file()
