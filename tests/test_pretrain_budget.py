"""Every pretraining run says how many passes over its subset it made and whether mAP@100 had
stopped rising; fits and the report flag a curve whose largest size had not converged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.fit import fit_table
from analysis.results import to_frame
from scaling.pretrain.config import PretrainConfig
from scaling.pretrain.budget import training_budget


def _cfg(steps=800, batch=64):
    cfg = PretrainConfig()
    cfg.schedule.steps, cfg.schedule.global_batch = steps, batch
    return cfg


def test_a_still_rising_run_is_not_converged_and_a_plateau_is():
    rising = [(200, 0.05), (400, 0.09), (600, 0.13), (800, 0.16)]
    flat = [(200, 0.05), (400, 0.14), (600, 0.159), (800, 0.160)]
    up = training_budget(_cfg(), 7200, rising)
    assert up["passes"] == pytest.approx(800 * 64 / 7200, abs=1e-3)
    assert up["converged"] is False and up["map_gain"] == pytest.approx(0.03 / 200 * 200, rel=1e-6)  # 25% more steps = 200
    assert up["map_slope_per_1k_steps"] == pytest.approx(0.15)
    assert training_budget(_cfg(), 240, flat)["converged"] is True
    assert training_budget(_cfg(), 240, [(800, 0.1)])["converged"] is None


def test_with_a_curriculum_the_slope_is_taken_inside_its_full_size_stage():
    # Compute placement at 4,000 steps: the 56 px stage starts at step 3,417, inside the last quarter.
    # The jump at the switch (3,000 at 40 px -> 3,500 at 56 px) must not read as "still rising".
    cfg = _cfg(steps=4000)
    cfg.curriculum.name, cfg.curriculum.starts, cfg.curriculum.sizes = "efficienttrain", [0.0, 0.35, 0.7], [0.58, 0.72, 1.0]
    cfg.data.loader.image_size = 56
    evals = [(1000, 0.05), (2000, 0.10), (3000, 0.12), (3500, 0.20), (4000, 0.201)]
    assert training_budget(cfg, 7200, evals)["converged"] is True
    cfg.curriculum.name = "none"            # the same numbers without a curriculum: rising
    assert training_budget(cfg, 7200, evals)["converged"] is False
    cfg.curriculum.name = "efficienttrain"  # one evaluation in the full-size stage: unknown, not a guess
    assert training_budget(cfg, 7200, [(3000, 0.12), (4000, 0.201)])["converged"] is None


def _rows(converged_at_largest: bool):
    rows = []
    for images in (100, 300, 1000, 3000):
        for seed in (0, 1):
            rows.append({"task": "detection", "metric": "AP", "test_set": "original", "mode": "frozen",
                         "arch": "resnet_demo", "init": "pretrained", "subset_images": images,
                         "seed": seed, "steps": 50, "value": 0.1 + 0.02 * np.log10(images) + 0.001 * seed,
                         "run_dir": f"ft/{images}-{seed}", "pretrain_run": f"pre/{images}", "stage": "finetune",
                         "pretrain_passes": 800 * 64 / images, "pretrain_map_gain": 0.01,
                         "pretrain_converged": converged_at_largest or images < 3000})
    return to_frame(rows)


def test_the_fit_flags_a_curve_whose_largest_size_had_not_converged():
    unfinished = fit_table(_rows(False), progress=False).fits
    assert (unfinished["largest_converged"] == False).all()  # noqa: E712
    assert unfinished["note"].str.contains("largest size's pretraining had not converged").all()
    finished = fit_table(_rows(True), progress=False).fits
    assert (finished["largest_converged"] == True).all()  # noqa: E712
    assert not finished["note"].fillna("").str.contains("not converged").any()
    assert isinstance(_rows(True)["pretrain_converged"].dtype, pd.BooleanDtype)


def test_the_report_budget_table_has_each_column_once():
    from analysis.report import pretraining_budget
    rows = [{"task": "pretrain", "metric": metric, "test_set": "eval", "stage": "pretrain",
             "subset_images": images, "value": value, "run_dir": f"pre/{images}",
             "pretrain_passes": 8.0, "pretrain_map_gain": 0.01, "pretrain_converged": images < 3000}
            for images in (1000, 3000) for metric, value in (("mAP@100", 0.1), ("mAP@100_all_levels", 0.2))]
    table = pretraining_budget(to_frame(rows))
    assert list(table.columns) == ["run", "subset_images", "passes", "mAP@100", "mAP@100_all_levels",
                                   "converged", "mAP@100 still to gain"]
    assert list(table["converged"]) == ["yes", "no"]
