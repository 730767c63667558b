"""Calibration of the dedup threshold: precision/recall definitions, the calibrated threshold."""

import pandas as pd
import pytest

from datascale.errors import DataError
from data_tools.dedup.calibration import Calibration, joint_calibration, load_ground_truth
from data_tools.dedup.testsets import TestImage, TestSet


def _testset(ids, dataset="detection", split="test"):
    return TestSet("t", "coco", None, [TestImage(i, f"{i}.jpg") for i in ids], dataset, split)


def _table(rows):
    return pd.DataFrame(rows, columns=["test_id", "pretrain_key", "score"])


def _truth(tmp_path, text, ids, in_index=None):
    path = tmp_path / "truth.csv"
    path.write_text(text)
    known = in_index if in_index is not None else None
    return load_ground_truth(path, _testset(ids),
                             lambda keys: {k: 0 for k in keys if known is None or k in known})


def test_precision_recall_and_the_calibrated_threshold(tmp_path):
    truth = _truth(tmp_path, "dataset,split,test_id,pretrain_key,transform\n"
                   "detection,test,a,pa,crop\ndetection,test,b,pb,flip\ndetection,test,c,pc,flip\n"
                   "segmentation,test,a,px,crop\n", ["a", "b", "c", "d", "e"])
    table = _table([("a", "pa", 0.95), ("a", "z1", 0.40), ("b", "pb", 0.80), ("c", "z2", 0.70),
                    ("c", "pc", 0.60), ("d", "z3", 0.85), ("e", "z4", 0.50)])
    cal = Calibration(table, truth, target_precision=0.75)
    # at 0.8: flagged a, b, d -> precision 2/3; at 0.9: a only -> 1.0; so precision >= 0.75 from
    # (0.85, 0.95]; the calibrated threshold sits midway between 0.85 and 0.95
    assert cal.calibrated == pytest.approx(0.90)
    record = cal.record(0.55, sweep=[0.5, 0.9])
    at = record["at_threshold"]
    # flagged at 0.55: a, b, c, d -> 3 positives of 4; recall: a, b, c (pc scores 0.60) -> 3/3
    assert at["precision"] == pytest.approx(0.75) and at["recall"] == pytest.approx(1.0)
    assert at["false_positives"] == ["d"] and at["missed"] == []
    assert record["per_transform"] == {"crop": {"pairs": 1, "found": 1, "recall": 1.0},
                                       "flip": {"pairs": 2, "found": 2, "recall": 1.0}}
    assert [c["threshold"] for c in record["curve"]] == [0.5, 0.55, 0.9]
    assert record["positives"] == 3 and record["negatives"] == 2 and record["true_pairs"] == 3


def test_recall_needs_the_true_pool_image_not_just_any_match(tmp_path):
    truth = _truth(tmp_path, "test_id,pretrain_key\na,pa\n", ["a", "b"])
    table = _table([("a", "other", 0.99), ("b", "z", 0.1)])   # a is flagged, but via the wrong image
    record = Calibration(table, truth, 0.95).record(0.9, sweep=[])
    assert record["at_threshold"]["recall"] == 0.0 and record["at_threshold"]["missed"] == ["a"]
    assert record["at_threshold"]["precision"] == 1.0   # the image itself does have a duplicate


def test_pairs_outside_the_index_and_unknown_test_ids_are_counted(tmp_path):
    truth = _truth(tmp_path, "test_id,pretrain_key\na,pa\nb,pb\nzz,pz\n", ["a", "b"], in_index={"pa"})
    assert truth.pairs == {"a": {"pa"}}
    assert truth.stats["pairs_not_in_index"] == 1 and truth.stats["unknown_test_ids"] == 1


def test_labelled_pairs_evaluate_only_the_labelled_images(tmp_path):
    truth = _truth(tmp_path, "test_id,pretrain_key,is_duplicate\na,pa,1\nb,pb,0\n", ["a", "b", "c"])
    assert truth.labelled == {"a", "b"}
    table = _table([("a", "pa", 0.9), ("b", "pb", 0.3), ("c", "q", 0.95)])
    record = Calibration(table, truth, 0.95).record(0.5, sweep=[])
    assert record["negatives"] == 1 and record["at_threshold"]["precision"] == 1.0  # c is not labelled


def test_no_threshold_reaching_the_target_gives_none(tmp_path):
    truth = _truth(tmp_path, "test_id,pretrain_key\na,pa\n", ["a", "b"])
    table = _table([("a", "pa", 0.7), ("b", "z", 0.9)])
    assert Calibration(table, truth, 0.95).calibrated is None


def test_joint_calibration_keeps_equal_ids_of_two_test_sets_apart(tmp_path):
    truth = _truth(tmp_path, "test_id,pretrain_key\n1,pa\n", ["1", "2"])
    other = _truth(tmp_path, "test_id,pretrain_key\n2,pb\n", ["1", "2"])
    joint = joint_calibration([("det", _table([("1", "pa", 0.9), ("2", "z", 0.2)]), truth),
                               ("pose", _table([("1", "z", 0.3), ("2", "pb", 0.8)]), other)], 0.95)
    record = joint.record(0.5, sweep=[])
    assert record["positives"] == 2 and record["negatives"] == 2
    assert record["at_threshold"]["recall"] == 1.0 and record["testsets"] == ["det", "pose"]
    assert joint.calibrated == pytest.approx(0.55)


def test_a_ground_truth_file_without_the_key_columns_is_an_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image,key\na,b\n")
    with pytest.raises(DataError, match="test_id and pretrain_key"):
        load_ground_truth(path, _testset(["a"]), lambda keys: {})
    path.write_text("test_id,pretrain_key,is_duplicate\na,b,maybe\n")
    with pytest.raises(DataError, match="is_duplicate must be 0/1"):
        load_ground_truth(path, _testset(["a"]), lambda keys: {})
