"""`dedup label` on the tiny synthetic world: export a sample, mark it from the planted truth, feed it back.

The world's planted copies stand in for a person: the exported pairs are
marked automatically, the marked file calibrates the threshold, and the
estimate of copies left in clean/ must cover the true number.
"""

import json

import numpy as np
import pandas as pd
import pytest

from datascale.cli import main
from datascale.errors import DataError
from data_tools.dedup.labels import allocate, bands, remaining_copies

pytestmark = pytest.mark.slow

DATASETS = {
    "detection_test": "detection/annotations/instances_test.json",
    "segmentation_test": "segmentation/ImageSets/Segmentation/test.txt",
    "pose_test": "pose/annotations/person_keypoints_test.json",
}


def test_every_band_is_sampled_and_none_beyond_its_size():
    # shares 1 x sqrt(400) = 20, 2 x sqrt(10) = 6.3, 4 x sqrt(3) = 6.9, ...; at least 2 per band
    assert allocate([400, 10, 3, 0, 5], [1, 2, 4, 4, 1], 20) == [12, 3, 3, 0, 2]
    assert sum(allocate([400, 10, 3, 1], [1, 1, 1, 1], 1000)) == 414
    assert bands(0.85, [-0.1, 0.0]) == [(-1.0, 0.75), (0.75, 0.85), (0.85, 1.0 + 1e-6)]


def test_remaining_copies_counts_marked_ones_and_scales_the_rest():
    scores = pd.Series({f"i{i}": s for i, s in enumerate([0.1] * 90 + [0.8] * 10)})
    sample = pd.DataFrame({"test_id": ["i0", "i1", "i90", "i91"], "stratum": [0, 0, 1, 1],
                           "stratum_low": [-1.0, -1.0, 0.7, 0.7], "stratum_high": [0.7, 0.7, 0.9, 0.9],
                           "is_duplicate": ["0", "0", "1", "0"]})
    out = remaining_copies(sample, scores, threshold=0.9, confidence=0.95)
    assert out["kept_images"] == 100 and out["estimate"] == pytest.approx(1 + 8 * 0.5)
    low, high = out["interval"]
    assert 1 <= low <= out["estimate"] <= high <= 100


def _planted_pairs(world):
    planted = pd.read_csv(world / "world" / "duplicates" / "planted.csv", dtype=str)
    return {(d, t, k) for d, t, k in zip(planted["dataset"], planted["test_id"], planted["pretrain_key"])}


def _audit(world, out, *extra):
    args = ["-q", "dedup", "audit", str(world / "index"), "--out", str(out), "-c", "dedup/tiny", *extra]
    for relative in DATASETS.values():
        args += ["--testset", str(world / "world" / relative)]
    assert main(args) == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    assert main(["-q", "synth", "-c", "world/tiny", "--out", str(root / "world"), "--workers", "1"]) == 0
    assert main(["-q", "shards", "write", str(root / "world"), "--out", str(root / "shards"),
                 "--set", "samples_per_shard=150", "--set", "workers=1"]) == 0
    assert main(["-q", "dedup", "index", str(root / "shards"), "--out", str(root / "index"),
                 "-c", "dedup/tiny"]) == 0
    _audit(root, root / "audit")                       # no ground truth: the embedder's default
    assert main(["-q", "dedup", "label", str(root / "audit"), "--out", str(root / "labels"),
                 "--pairs", "36", "-c", "dedup/tiny"]) == 0
    return root


def test_the_export_is_a_stratified_sample_with_a_gallery(world):
    pairs = pd.read_csv(world / "labels" / "pairs.csv", dtype=str, keep_default_na=False)
    assert len(pairs) >= 36 and set(pairs["testset"]) == set(DATASETS)
    assert (pairs["is_duplicate"] == "").all() and pairs["pair"].tolist() == [str(i) for i in
                                                                             range(1, len(pairs) + 1)]
    strata = json.loads((world / "labels" / "strata.json").read_text())
    for record in strata["testsets"]:
        for band in record["bands"]:
            assert 0 < band["sampled"] <= band["images"] or band["images"] == 0
        far, rest = record["bands"][0], [b for b in record["bands"][1:] if b["images"]]
        assert far["sampled"] < far["images"]                  # [-1, t - 0.15): the sparsest sample
        assert all(b["sampled"] / b["images"] >= far["sampled"] / far["images"] for b in rest)
    assert list((world / "labels").glob("gallery-*.png"))


def test_marked_pairs_calibrate_and_estimate_the_copies_left(world, tmp_path):
    pairs = pd.read_csv(world / "labels" / "pairs.csv", dtype=str, keep_default_na=False)
    planted = _planted_pairs(world)
    pairs["is_duplicate"] = [int((d, t, k) in planted) for d, t, k in
                             zip(pairs["dataset"], pairs["test_id"], pairs["pretrain_key"])]
    marked = tmp_path / "marked.csv"
    pairs.to_csv(marked, index=False)
    _audit(world, world / "audit_marked", "--ground-truth", str(marked))
    for name in DATASETS:
        summary = json.loads((world / "audit_marked" / name / "summary.json").read_text())
        assert "calibrated" in summary["threshold_source"]
        held = summary["held_out"]
        assert held["weighted"] and held["precision"]["interval"] and held["recall"]["interval"]
        # the truth: kept images whose best neighbour is their planted copy
        table = pd.read_parquet(world / "audit_marked" / name / "duplicates.parquet")
        best = table[table["rank"] == 1]
        dataset = name.removesuffix("_test")
        kept_copies = sum((dataset, t, k) in planted for t, k, flag in
                          zip(best["test_id"], best["pretrain_key"], best["is_duplicate"]) if not flag)
        remaining = summary["remaining_duplicates"]
        assert remaining["interval"][0] <= kept_copies <= remaining["interval"][1], (name, remaining)
        assert "Copies remaining in the cleaned test set" in (world / "audit_marked" / name /
                                                              "report.md").read_text()
    # against every planted copy, the threshold chosen on the marks holds up
    flagged, positives, found = 0, 0, 0
    for name in DATASETS:
        table = pd.read_parquet(world / "audit_marked" / name / "duplicates.parquet")
        best = table[table["rank"] == 1]
        dataset = name.removesuffix("_test")
        truth = {t for d, t, _ in planted if d == dataset}
        flagged_ids = set(best.loc[best["is_duplicate"], "test_id"])
        flagged += len(flagged_ids)
        positives += len(flagged_ids & truth)
        found += sum((dataset, t, k) in planted for t, k in
                     zip(table.loc[table["is_duplicate"], "test_id"], table.loc[table["is_duplicate"], "pretrain_key"]))
    assert positives / flagged >= 0.9 and found / len(planted) >= 0.9, (positives, flagged, found)


def test_labels_marked_only_as_copies_are_refused(world, tmp_path):
    pairs = pd.read_csv(world / "labels" / "pairs.csv", dtype=str, keep_default_na=False)
    pairs["is_duplicate"] = "1"
    marked = tmp_path / "all_ones.csv"
    pairs.to_csv(marked, index=False)
    args = ["-q", "dedup", "audit", str(world / "index"), "--out", str(tmp_path / "a"), "-c", "dedup/tiny",
            "--testset", str(world / "world" / DATASETS["pose_test"]), "--ground-truth", str(marked)]
    assert main(args) == 1
