"""The self-training section: the metric by labelled fraction and augmentation, one column per init
(Zoph et al. 2020), and a headline that shows the main fine-tuning setting only."""

from __future__ import annotations

import itertools

from datascale.cli import main
from test_results_run_folders import make_run

SIZES = (10_000_000, 100_000_000)
# value = base(fraction) + gain(init, fraction): pretraining helps at 20% labels, not at 100%;
# self-training helps at both; strong augmentation adds 0.01 for every init.
BASE = {0.2: 0.20, 1.0: 0.40}
GAIN = {("pretrained", 0.2): 0.06, ("pretrained", 1.0): 0.0, ("selftrain", 0.2): 0.03, ("selftrain", 1.0): 0.02}


def _value(init, fraction, augment, size, seed):
    growth = 0.01 * SIZES.index(size) if size else 0.0
    return BASE[fraction] + GAIN.get((init, fraction), 0.0) + (0.01 if augment != "flip" else 0.0) \
        + growth + 0.002 * seed  # seed mean: +0.001


def _runs(root):
    for init, fraction, augment, seed in itertools.product(("random", "pretrained", "selftrain"), BASE,
                                                           ("flip", "lsj_randaugment"), (0, 1)):
        for size in (SIZES if init == "pretrained" else (None,)):
            lineage = {"task": "segmentation", "mode": "finetune", "seed": seed, "arch": "resnet50",
                       "init": init, "subset_images": size, "steps": 100, "augment": augment,
                       "labelled_fraction": fraction,
                       "pretrain_run": f"pre/{size}" if size else None}
            make_run(root, f"{init}-{fraction}-{augment}-{size}-{seed}", task="segmentation",
                     metrics={"original": {"mIoU": _value(init, fraction, augment, size, seed)}},
                     lineage=lineage, stage="selftrain" if init == "selftrain" else "finetune")


def test_the_selftrain_section_compares_inits_by_labelled_fraction_and_augmentation(tmp_path):
    _runs(tmp_path / "runs")
    results = tmp_path / "results"
    for argv in (["results", "collect", str(tmp_path / "runs"), "--out", str(results / "results.parquet")],
                 ["fit", "--results", str(results / "results.parquet")],
                 ["plot", "--results", str(results / "results.parquet"), "--set", "formats=[png]"]):
        assert main(["-q", *argv]) == 0
    report = (results / "report.md").read_text()
    section = report.split("## Self-training and pretraining (Zoph et al. 2020)")[1].split("\n## ")[0]
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:7]]
            for line in section.splitlines() if line.startswith("| segmentation")}
    assert set(rows) == {("segmentation", a, f) for a in ("flip", "lsj_randaugment") for f in ("0.2", "1")}
    random, pretrained, selftrain = rows[("segmentation", "flip", "0.2")]
    assert random.startswith("0.201") and pretrained.startswith("0.271") and selftrain.startswith("0.231")
    random, pretrained, selftrain = rows[("segmentation", "lsj_randaugment", "1")]
    assert random.startswith("0.411") and pretrained.startswith("0.421") and selftrain.startswith("0.431")
    assert "pretrained (100,000,000 images)" in section  # the largest subset's backbone
    assert (results / "plots" / "selftrain.png").is_file()
    # The headline: all labels, flips only: random init 0.401, not a mean over fractions.
    headline = report.split("## Headline")[1].split("\n## ")[0]
    line = next(l for l in headline.splitlines() if l.startswith("| segmentation | finetune"))
    assert "| 0.401 |" in line, line
