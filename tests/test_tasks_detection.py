"""Detection: COCO reading and its bad inputs, box AP against pycocotools on known predictions."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from datascale.errors import DataError
from scaling.tasks.coco_data import read_coco
from scaling.tasks.coco_eval import coco_metrics
from scaling.tasks.config import FinetuneConfig
from scaling.tasks.detection import TASK, DetectionDataset

CATEGORIES = [{"id": 3, "name": "face"}, {"id": 7, "name": "cup"}]


def _write(tmp_path, anns, images=None, photos=("astronaut", "coffee")):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    records = []
    for image_id, name in enumerate(photos, start=1):
        photo = getattr(skdata, name)()
        Image.fromarray(photo).save(folder / f"{name}.jpg")
        records.append({"id": image_id, "file_name": f"{name}.jpg",
                        "width": photo.shape[1], "height": photo.shape[0]})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images if images is not None else records,
                                "annotations": anns, "categories": CATEGORIES}))
    return path, folder


def _ann(ann_id, image_id, bbox, category_id=3):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0}


GOOD = [_ann(1, 1, [170, 30, 110, 140]), _ann(2, 1, [300, 200, 120, 250], 7),
        _ann(3, 2, [100, 40, 300, 250], 7), _ann(4, 2, [20, 300, 60, 80])]


def test_perfect_predictions_score_ap_one(tmp_path):
    coco = read_coco(*_write(tmp_path, GOOD))
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in GOOD]
    assert coco_metrics(coco.gt, results, "bbox") == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}


def test_shifted_boxes_lose_exactly_the_thresholds_above_their_iou(tmp_path):
    coco = read_coco(*_write(tmp_path, GOOD))
    # Shifting a box by s of its width gives IoU (1 - s) / (1 + s); 0.62 passes 0.5, 0.55, 0.6 only.
    shift = (1 - 0.62) / (1 + 0.62)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
                "bbox": [a["bbox"][0] + shift * a["bbox"][2], *a["bbox"][1:]]} for a in GOOD]
    metrics = coco_metrics(coco.gt, results, "bbox")
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.3)


def test_no_predictions_score_zero(tmp_path):
    coco = read_coco(*_write(tmp_path, GOOD))
    assert coco_metrics(coco.gt, [], "bbox") == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


class _Oracle:
    """Stands in for Faster R-CNN: returns each image's ground truth in the resized coordinates."""

    def __init__(self, dataset):
        self.items = iter(dataset[i][1] for i in range(len(dataset)))

    def eval(self):
        return self

    def __call__(self, images):
        outs = [next(self.items) for _ in images]
        return [dict(t, scores=torch.ones(len(t["labels"]))) for t in outs]


def test_task_evaluation_maps_resized_predictions_back_to_original_pixels(tmp_path):
    ann, images = _write(tmp_path, GOOD)
    cfg = FinetuneConfig(arch="resnet_demo", init="random")
    cfg.data.root, cfg.data.image_size = str(tmp_path), 96
    dataset = DetectionDataset(read_coco(ann, images), 96, cache=False)
    assert dataset.load(0)[0].shape[-2:] == (96, 96)  # 512 x 512 astronaut -> 96 px
    metrics = TASK.evaluate(_Oracle(dataset), dataset, cfg, cache={})
    assert metrics["AP"] == pytest.approx(1.0)


def test_missing_images_are_skipped_and_counted(tmp_path):
    ann, folder = _write(tmp_path, GOOD)
    (folder / "coffee.jpg").unlink()
    coco = read_coco(ann, folder)
    assert [img["file_name"] for img in coco.images] == ["astronaut.jpg"]
    assert coco.skipped == {"image missing on disk": 1, "annotation of a skipped image": 2}
    assert {a["image_id"] for a in coco.gt["annotations"]} == {1}


def test_images_whose_size_differs_from_the_json_are_skipped_and_counted(tmp_path):
    ann, folder = _write(tmp_path, GOOD)
    Image.fromarray(skdata.coffee()[::2, ::2].copy()).save(folder / "coffee.jpg")  # 300 x 200, JSON says 600 x 400
    coco = read_coco(ann, folder)
    assert [img["file_name"] for img in coco.images] == ["astronaut.jpg"]
    assert coco.skipped == {"image size differs from its JSON record": 1, "annotation of a skipped image": 2}


def test_all_images_missing_is_an_error(tmp_path):
    ann, folder = _write(tmp_path, GOOD)
    for file in folder.iterdir():
        file.unlink()
    with pytest.raises(DataError, match="none of the 2 images"):
        read_coco(ann, folder)


def test_zero_area_and_out_of_image_boxes_are_skipped_partial_ones_clipped(tmp_path):
    anns = GOOD + [_ann(5, 1, [10, 10, 0, 30]), _ann(6, 1, [600, 600, 20, 20]),
                   _ann(7, 2, [-20, 350, 100, 100])]
    coco = read_coco(*_write(tmp_path, anns))
    assert coco.skipped == {"zero-area or out-of-image box": 2, "box clipped to its image (kept)": 1}
    clipped = next(a for a in coco.gt["annotations"] if a["id"] == 7)
    assert clipped["bbox"] == [0.0, 350.0, 80.0, 50.0]  # coffee is 600 x 400
    assert len(coco.gt["annotations"]) == len(GOOD) + 1


def test_unknown_category_ids_are_an_error_naming_them(tmp_path):
    with pytest.raises(DataError, match=r"category_id that is not among the categories \[3, 7\].*\[9\]"):
        read_coco(*_write(tmp_path, GOOD + [_ann(9, 1, [1, 1, 5, 5], category_id=42)]))


def test_malformed_files_are_data_errors(tmp_path):
    ann, folder = _write(tmp_path, GOOD)
    ann.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_coco(ann, folder)
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="is not COCO JSON"):
        read_coco(ann, folder)
    ann, folder = _write(tmp_path, [dict(GOOD[0], bbox=[1, 2, 3])])
    with pytest.raises(DataError, match="valid 'bbox'"):
        read_coco(ann, folder)
