"""Held-out (cross-validated) precision and recall of the dedup threshold, with exact intervals."""

import numpy as np
import pandas as pd
import pytest

from datascale.errors import DataError
from data_tools.dedup.calibration import Calibration, GroundTruth, joint_calibration, load_ground_truth
from data_tools.dedup.heldout import clopper_pearson, cross_validate, image_folds, proportion
from data_tools.dedup.testsets import TestImage, TestSet


def test_clopper_pearson_matches_the_exact_binomial_bounds():
    low, high = clopper_pearson(45, 45)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 45), abs=1e-9)   # (alpha/2)^(1/n)
    assert low == pytest.approx(0.921, abs=1e-3)          # 45 of 45 copies found: recall >= 0.92
    assert clopper_pearson(0, 10) == [0.0, pytest.approx(1 - 0.025 ** 0.1)]
    assert clopper_pearson(0, 0) is None


def test_a_weighted_proportion_uses_the_effective_count():
    even = proportion(np.array([True, False] * 5), np.ones(10), 0.95)
    assert even["trials"] == 10 and even["interval"] == clopper_pearson(5, 10)
    skewed = proportion(np.array([True, False] * 5), np.array([9.0, 1.0] * 5), 0.95)
    assert skewed["value"] == pytest.approx(0.9) and skewed["trials"] < 10   # Kish n_eff


def test_folds_are_stratified_and_cover_every_image():
    positive = np.array([True] * 7 + [False] * 23)
    fold = image_folds(positive, 5, seed=0)
    assert sorted(np.bincount(fold[positive])) == [1, 1, 1, 2, 2]
    assert sorted(np.bincount(fold[~positive])) == [4, 4, 5, 5, 5]


def _world(seed=0, positives=60, negatives=400):
    """Copies score ~N(0.93, 0.03), distinct images' best match ~N(0.78, 0.06): they overlap."""
    rng = np.random.default_rng(seed)
    rows, pairs = [], {}
    for i in range(positives):
        rows.append((f"p{i}", f"k{i}", min(rng.normal(0.93, 0.03), 1.0)))
        pairs[f"p{i}"] = {f"k{i}"}
    rows += [(f"n{i}", f"z{i}", rng.normal(0.78, 0.06)) for i in range(negatives)]
    table = pd.DataFrame(rows, columns=["test_id", "pretrain_key", "score"])
    truth = GroundTruth(pairs, {(t, k): "copy" for t, ks in pairs.items() for k in ks}, None)
    return Calibration(table, truth, target_precision=0.95)


def test_held_out_figures_come_from_thresholds_not_tuned_on_the_fold():
    cal = _world()
    held = cross_validate(cal, folds=5, seed=0, confidence=0.95, fallback=0.85)
    assert held["folds"] == 5 and len(held["fold_thresholds"]) == 5
    assert held["positives"] == 60 and held["images"] == 460
    p, r = held["precision"], held["recall"]
    assert p["interval"][0] <= p["value"] <= p["interval"][1]
    assert r["trials"] == 60 and r["interval"] == clopper_pearson(r["successes"], 60)
    # re-scored on the images it was tuned on, precision is >= the target by construction
    at = cal.record(cal.calibrated, sweep=[])["at_threshold"]
    assert at["precision"] >= 0.95 and at["precision_interval"][1] >= at["precision"]


def test_a_given_threshold_is_evaluated_on_every_image():
    cal = _world()
    held = cross_validate(cal, folds=5, seed=0, confidence=0.95, fallback=0.85, fixed=0.9)
    at = cal.record(0.9, sweep=[])["at_threshold"]
    assert held["folds"] == 0 and held["precision"]["value"] == pytest.approx(at["precision"])


def _testset(ids):
    return TestSet("t", "folder", None, [TestImage(i, f"{i}.jpg") for i in ids], None, None)


def test_labels_without_a_negative_are_refused(tmp_path):
    path = tmp_path / "marked.csv"
    path.write_text("test_id,pretrain_key,is_duplicate\na,pa,1\nb,pb,1\n")
    with pytest.raises(DataError, match="marked.csv: no pair is marked is_duplicate=0.*dedup label"):
        load_ground_truth(path, _testset(["a", "b", "c"]), lambda keys: {k: 0 for k in keys})
    path.write_text("test_id,pretrain_key,is_duplicate\na,pa,\n")
    with pytest.raises(DataError, match="no pair is marked"):
        load_ground_truth(path, _testset(["a"]), lambda keys: {})


def test_unmarked_rows_are_counted_and_left_out(tmp_path):
    path = tmp_path / "marked.csv"
    path.write_text("test_id,pretrain_key,is_duplicate\na,pa,1\nb,pb,0\nc,pc,\n")
    truth = load_ground_truth(path, _testset(["a", "b", "c"]), lambda keys: {k: 0 for k in keys})
    assert truth.labelled == {"a", "b"} and truth.stats["unmarked_rows"] == 1


def test_exhaustive_ground_truth_listing_every_image_is_refused(tmp_path):
    path = tmp_path / "planted.csv"
    path.write_text("test_id,pretrain_key\na,pa\nb,pb\n")
    truth = load_ground_truth(path, _testset(["a", "b"]), lambda keys: {k: 0 for k in keys})
    table = pd.DataFrame([("a", "pa", 0.9), ("b", "pb", 0.4)], columns=["test_id", "pretrain_key", "score"])
    with pytest.raises(DataError, match="no negatives"):
        joint_calibration([("t", table, truth)], 0.95)
