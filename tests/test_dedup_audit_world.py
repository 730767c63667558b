"""End to end on the tiny synthetic world: synth -> shards -> dedup index -> dedup audit.

Checks the planted duplicates are found (calibrated precision and recall),
every output file follows docs/formats.md, the cleaned test sets lose exactly
the flagged images (and their annotations), and a rerun is skipped.
"""

import json

import pandas as pd
import pytest
from PIL import Image

from datascale.cli import main

pytestmark = pytest.mark.slow

DATASETS = {
    "detection_test": "detection/annotations/instances_test.json",
    "segmentation_test": "segmentation/ImageSets/Segmentation/test.txt",
    "pose_test": "pose/annotations/person_keypoints_test.json",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    assert main(["-q", "synth", "-c", "world/tiny", "--out", str(root / "world"), "--workers", "1"]) == 0
    assert main(["-q", "shards", "write", str(root / "world"), "--out", str(root / "shards"),
                 "--set", "samples_per_shard=150", "--set", "workers=1"]) == 0
    assert main(["-q", "dedup", "index", str(root / "shards"), "--out", str(root / "index"),
                 "-c", "dedup/tiny"]) == 0
    return root


def _audit(world, out, *extra):
    args = ["-q", "dedup", "audit", str(world / "index"), "--out", str(out), "-c", "dedup/tiny",
            "--ground-truth", str(world / "world" / "duplicates" / "planted.csv"), *extra]
    for relative in DATASETS.values():
        args += ["--testset", str(world / "world" / relative)]
    return main(args)


@pytest.fixture(scope="module")
def audit(world):
    assert _audit(world, world / "audit") == 0
    return world / "audit"


def test_planted_duplicates_are_found_at_the_calibrated_threshold(audit):
    planted = pd.read_csv(audit.parent / "world" / "duplicates" / "planted.csv", dtype=str)
    joint = json.loads((audit / "pose_test" / "summary.json").read_text())["joint_calibration"]
    assert joint["true_pairs"] == len(planted) and joint["exhaustive"]
    assert joint["at_threshold"]["precision"] >= 0.95 and joint["at_threshold"]["recall"] >= 0.95
    assert set(joint["per_transform"]) == set(planted["transform"])
    for name in DATASETS:
        summary = json.loads((audit / name / "summary.json").read_text())
        assert summary["threshold"] == joint["calibrated_threshold"]
        assert "calibrated" in summary["threshold_source"]
        rows = planted[planted["dataset"] + "_test" == name]
        table = pd.read_parquet(audit / name / "duplicates.parquet")
        found = table[table["is_duplicate"]].merge(rows, on=["test_id"])
        assert (found["pretrain_key_x"] == found["pretrain_key_y"]).sum() >= len(rows) - 1


def test_outputs_follow_the_documented_format(audit):
    for name in DATASETS:
        folder = audit / name
        for file in ("config.yaml", "complete.json", "summary.json", "report.md", "gallery.png",
                     "duplicates.parquet"):
            assert (folder / file).is_file(), (name, file)
        table = pd.read_parquet(folder / "duplicates.parquet")
        assert list(table.columns) == ["test_id", "test_image", "rank", "pretrain_key", "score", "view",
                                       "pool_shard", "retrieval_score", "is_duplicate"]
        # crop alignment only raises scores, names its box, and ranks stay in score order
        assert (table["score"] >= table["retrieval_score"]).all()
        raised = table["score"] > table["retrieval_score"]
        assert table.loc[raised, "view"].str.contains("aligned").all()
        for _, rows in table.groupby("test_id"):
            assert rows.sort_values("rank")["score"].is_monotonic_decreasing
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["aligned"]["pairs_raised"] == int(raised.sum())
        assert len(table) == 5 * summary["readable_images"] and summary["readable_images"] == 30
        assert table["score"].between(-1.001, 1.001).all()
        assert [s["threshold"] for s in summary["sweep"]] == sorted(s["threshold"] for s in summary["sweep"])
        report = (folder / "report.md").read_text()
        for heading in ("## Threshold sweep", "## Calibration against known duplicates", "## Gallery",
                        "Recall per transform"):
            assert heading in report
        with Image.open(folder / "gallery.png") as gallery:
            assert gallery.format == "PNG" and gallery.width > 500


def test_cleaned_test_sets_lose_exactly_the_flagged_images(audit):
    world = audit.parent / "world"
    for name, relative in DATASETS.items():
        table = pd.read_parquet(audit / name / "duplicates.parquet")
        flagged = set(table.loc[table["is_duplicate"], "test_id"])
        assert flagged
        source = world / relative
        cleaned = audit / name / "clean" / source.name
        if source.suffix == ".json":
            before, after = json.loads(source.read_text()), json.loads(cleaned.read_text())
            assert {str(im["id"]) for im in after["images"]} == \
                {str(im["id"]) for im in before["images"]} - flagged
            assert all(str(a["image_id"]) not in flagged for a in after["annotations"])
            assert len(after["annotations"]) < len(before["annotations"])
            assert after["categories"] == before["categories"]
        else:
            kept = cleaned.read_text().split()
            assert set(kept) == set(source.read_text().split()) - flagged


def test_a_rerun_is_skipped_and_a_given_threshold_is_used(world, audit, tmp_path):
    stamp = (audit / "detection_test" / "complete.json").read_text()
    assert _audit(world, audit) == 0
    assert (audit / "detection_test" / "complete.json").read_text() == stamp
    assert _audit(world, tmp_path / "strict", "--threshold", "0.999") == 0
    summary = json.loads((tmp_path / "strict" / "detection_test" / "summary.json").read_text())
    assert summary["threshold"] == 0.999 and summary["threshold_source"] == "given (--threshold)"
    assert summary["calibration"]["at_threshold"]["threshold"] == 0.999
