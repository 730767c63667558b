"""Planted near-duplicates: planted.csv points at real files, copies look like their test
images (far closer than random pairs), transforms get fair shares and stay mild."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from datascale.config import load_config
from data_tools.synth.config import TRANSFORM_NAMES, WorldConfig
from data_tools.synth.duplicates import make_copy, objects_in_window, plan_duplicates
from data_tools.synth.world import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    # 60 test images per dataset and fraction 0.2: 36 copies, 6 per transform.
    config = load_config(WorldConfig, "world/tiny", [
        "pretrain.images=300", "eval.images=10", "detection.train=5", "detection.val=5", "detection.test=60",
        "segmentation.train=5", "segmentation.val=5", "segmentation.test=60", "pose.train=5", "pose.val=5",
        "pose.test=60", "duplicates.fraction=0.2"])
    generate_world(config, out, workers=1)
    rows = list(csv.DictReader((out / "duplicates" / "planted.csv").open()))
    pool = {json.loads(line)["key"]: json.loads(line)
            for line in (out / "pretrain" / "labels.jsonl").read_text().splitlines()}
    return out, config, rows, pool


def _signature(image: Image.Image) -> np.ndarray:
    grey = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float64)
    return (grey - grey.mean()) / (grey.std() + 1e-6)


def _views(image: Image.Image) -> np.ndarray:
    """Signatures of the test image as a crop/flip/rotation-aware matcher would try them."""
    w, h = image.size
    views = [image, image.transpose(Image.FLIP_LEFT_RIGHT)]
    for side in (0.84, 0.92):
        cw, ch = round(w * side), round(h * side)
        for fx in (0, 0.5, 1):
            for fy in (0, 0.5, 1):
                x0, y0 = round((w - cw) * fx), round((h - ch) * fy)
                views.append(image.crop((x0, y0, x0 + cw, y0 + ch)))
    views += [image.rotate(angle, resample=Image.BILINEAR) for angle in (-8, -4, 4, 8)]
    return np.stack([_signature(v) for v in views])


def _distance(views: np.ndarray, candidate: Image.Image) -> float:
    return float(np.abs(views - _signature(candidate)).mean(axis=(1, 2)).min())


def _open_pool(out, record):
    return Image.open(out / "pretrain" / record["image"])


def test_planted_csv_points_at_existing_test_images_and_pool_keys(world):
    out, config, rows, pool = world
    assert list(rows[0]) == ["dataset", "split", "test_image", "test_id", "pretrain_key", "transform"]
    assert len(rows) == 3 * 12
    assert len({r["pretrain_key"] for r in rows}) == len(rows)
    for row in rows:
        assert row["split"] == "test"
        assert (out / row["dataset"] / row["test_image"]).is_file()
        assert row["pretrain_key"] in pool and (out / "pretrain" / pool[row["pretrain_key"]]["image"]).is_file()
    det = json.loads((out / "detection" / "annotations" / "instances_test.json").read_text())
    by_id = {img["id"]: img["file_name"] for img in det["images"]}
    for row in rows:
        if row["dataset"] == "detection":
            assert row["test_image"] == f"images/test/{by_id[int(row['test_id'])]}"
        if row["dataset"] == "segmentation":
            assert row["test_image"] == f"JPEGImages/{row['test_id']}.jpg"
            assert row["test_id"] in (out / "segmentation/ImageSets/Segmentation/test.txt").read_text().split()


def test_transforms_get_fair_shares(world):
    out, config, rows, _ = world
    counts = {t: sum(r["transform"] == t for r in rows) for t in TRANSFORM_NAMES}
    assert set(counts.values()) == {6}
    summary = json.loads((out / "world.json").read_text())
    assert summary["duplicates"]["per_transform"] == counts
    assert summary["pretrain"]["planted_copies"] == len(rows)


def test_planted_pairs_are_much_closer_than_random_pairs(world):
    out, config, rows, pool = world
    planted_keys = {r["pretrain_key"] for r in rows}
    others = [record for key, record in sorted(pool.items()) if key not in planted_keys][:80]
    random_distances, pair_distances = [], {}
    for i, row in enumerate(rows):
        with Image.open(out / row["dataset"] / row["test_image"]) as test_image:
            views = _views(test_image.convert("RGB"))
        with _open_pool(out, pool[row["pretrain_key"]]) as copy:
            pair_distances[(row["pretrain_key"], row["transform"])] = _distance(views, copy)
        for record in others[i % 10::10]:
            with _open_pool(out, record) as other:
                random_distances.append(_distance(views, other))
    threshold = np.percentile(random_distances, 1)
    assert all(d < threshold for d in pair_distances.values()), (threshold, pair_distances)
    assert np.median(list(pair_distances.values())) < 0.25 * np.median(random_distances)


def test_planted_copies_carry_the_test_objects_as_labels(world):
    out, config, rows, pool = world
    det = json.loads((out / "detection" / "annotations" / "instances_test.json").read_text())
    classes_by_image = {}
    for ann in det["annotations"]:
        classes_by_image.setdefault(ann["image_id"], set()).add(ann["class_id"])
    for row in rows:
        record = pool[row["pretrain_key"]]
        assert record["true_labels"], row
        if row["dataset"] == "detection":
            assert set(record["true_labels"]) <= classes_by_image[int(row["test_id"])]
            if row["transform"] != "crop":
                assert set(record["true_labels"]) == classes_by_image[int(row["test_id"])]


def test_crops_keep_most_of_the_image_and_the_main_object():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(96, 96, 3), dtype=np.uint8)
    obj = np.zeros((96, 96), dtype=bool)
    obj[70:90, 2:20] = True  # an object in a corner must stay in view
    for pool_index in range(40):
        jpeg, (x0, y0, x1, y1) = make_copy(image, [obj], "crop", 0, pool_index, 64, 90)
        assert (x1 - x0) * (y1 - y0) >= 0.69 * 96 * 96
        assert objects_in_window([obj], (x0, y0, x1, y1)) == [0]


def test_no_copies_when_fraction_is_zero_and_all_test_images_at_one():
    config = load_config(WorldConfig, "world/tiny", ["duplicates.fraction=0"])
    assert plan_duplicates(config) == []
    config = load_config(WorldConfig, "world/tiny", ["duplicates.fraction=1.0"])
    copies = plan_duplicates(config)
    assert len(copies) == 90 and len({c.pool_index for c in copies}) == 90
    assert {(c.dataset, c.test_index) for c in copies} == {(d, i) for d in ("detection", "segmentation", "pose")
                                                           for i in range(30)}
