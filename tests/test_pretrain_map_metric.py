"""mAP@100 (FastEval14K-style) against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from scaling.pretrain.map_metric import TopKAccumulator


def _random_eval(seed=0, n=300, c=40):
    rng = np.random.default_rng(seed)
    truth = rng.random((n, c)) < 0.08
    scores = rng.normal(size=(n, c)) + 1.5 * truth
    return scores, truth, [np.flatnonzero(row) for row in truth]


def test_with_k_equal_to_classes_it_is_sklearn_mean_ap():
    scores, truth, labels = _random_eval()
    acc = TopKAccumulator(truth.shape[1], k=truth.shape[1])
    for start in range(0, len(scores), 64):  # batches must not change the result
        acc.add(scores[start:start + 64], labels[start:start + 64])
    expected = np.mean([average_precision_score(truth[:, c], scores[:, c])
                        for c in range(truth.shape[1]) if truth[:, c].any()])
    assert acc.compute()[f"mAP@{truth.shape[1]}"] == pytest.approx(expected, abs=1e-12)


def test_positives_outside_the_top_k_count_as_misses():
    # One class, two positive images; image 1 does not rank it in its top-1.
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    acc = TopKAccumulator(2, k=1)
    acc.add(scores, [[0], [0]])
    # Class 0 is predicted only for image 0 (a hit at rank 1): AP = 1/2 positives.
    assert acc.compute()["mAP@1"] == pytest.approx(0.5)


def test_frequency_weighting_weights_by_positives():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    labels = [[0], [0], [0]]  # class 1 has no positives: excluded
    acc = TopKAccumulator(2, k=2)
    acc.add(scores, labels)
    assert acc.compute()["eval_classes"] == 1
    scores2 = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.7]])
    acc2 = TopKAccumulator(2, k=1)
    acc2.add(scores2, [[0], [1], [1]])
    mean = acc2.compute("mean")["mAP@1"]
    weighted = acc2.compute("frequency")["mAP@1"]
    # class 0: AP 1 (1 positive); class 1: predicted for image 1 only -> 1/2.
    assert mean == pytest.approx(0.75) and weighted == pytest.approx((1 * 1 + 0.5 * 2) / 3)


def test_better_scores_give_higher_map():
    scores, truth, labels = _random_eval(seed=1)
    good, bad = TopKAccumulator(truth.shape[1], k=5), TopKAccumulator(truth.shape[1], k=5)
    good.add(scores + 3 * truth, labels)
    bad.add(scores, labels)
    assert good.compute()["mAP@5"] > bad.compute()["mAP@5"] + 0.1


def test_empty_or_mismatched_input_is_an_error():
    acc = TopKAccumulator(3)
    with pytest.raises(ValueError, match="no eval images"):
        acc.compute()
    with pytest.raises(ValueError, match="expected 3"):
        acc.add(np.zeros((2, 4)), [[0], [1]])


def test_closure_classes_are_reported_apart_from_the_annotated_label_space():
    """With hierarchy closure an easy parent class ("fruit") would inflate the leaves' mAP."""
    rng = np.random.default_rng(3)
    n, leaves = 200, 6
    leaf = rng.integers(0, leaves, n)
    truth = np.zeros((n, leaves + 1), dtype=bool)
    truth[np.arange(n), leaf] = True
    truth[:, leaves] = True  # the parent of every leaf: a positive for every image after closure
    scores = rng.normal(size=truth.shape) + 1.0 * truth
    scores[:, leaves] += 5.0  # the parent is always ranked first: AP 1
    annotated = np.r_[np.ones(leaves, dtype=bool), False]
    acc = TopKAccumulator(leaves + 1, k=leaves + 1)
    acc.add(scores, [np.flatnonzero(row) for row in truth])
    out = acc.compute(annotated=annotated)
    per_class = [average_precision_score(truth[:, c], scores[:, c]) for c in range(leaves + 1)]
    assert out["mAP@7"] == pytest.approx(np.mean(per_class[:leaves]), abs=1e-12)
    assert out["mAP@7_all_levels"] == pytest.approx(np.mean(per_class), abs=1e-12)
    assert out["mAP@7_all_levels"] > out["mAP@7"]
    assert (out["eval_classes"], out["eval_classes_all_levels"]) == (leaves, leaves + 1)


def test_scores_are_compared_in_fp32_and_ties_keep_eval_order():
    acc = TopKAccumulator(1, k=1)
    acc.add(np.array([[0.5], [0.5], [0.5]], dtype=np.float16), [[], [0], []])
    # All three tie: eval order ranks the miss first, then the hit at rank 2: AP = 1/2.
    assert acc.compute()["mAP@1"] == pytest.approx(0.5)
