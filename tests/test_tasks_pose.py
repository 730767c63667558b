"""Pose: keypoint AP (OKS) against pycocotools, heatmap coding, sigmas, bad keypoint lists."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from datascale.errors import DataError
from scaling.tasks.coco_data import COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS, keypoint_sigmas, read_coco
from scaling.tasks.coco_eval import coco_metrics
from scaling.tasks.config import PoseConfig
from scaling.tasks.pose import PoseDataset, decode_heatmaps, gaussian_targets

NAMES = ["head", "left_hand", "right_hand", "waist"]
SIGMA = 0.05
PEOPLE = [  # (image id, bbox, keypoints) on skimage's astronaut (512 x 512) and a second copy
    (1, [140, 20, 230, 300], [250, 80, 2, 160, 260, 2, 350, 250, 1, 260, 300, 2]),
    (2, [150, 30, 200, 280], [245, 90, 2, 170, 250, 2, 330, 240, 2, 250, 290, 0]),
]


def _write(tmp_path, people=PEOPLE, category=None):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    Image.fromarray(skdata.astronaut()).save(folder / "a.jpg")
    Image.fromarray(skdata.astronaut()[:, ::-1].copy()).save(folder / "b.jpg")
    images = [{"id": 1, "file_name": "a.jpg", "width": 512, "height": 512},
              {"id": 2, "file_name": "b.jpg", "width": 512, "height": 512}]
    anns = [{"id": i + 1, "image_id": image_id, "category_id": 1, "bbox": box, "area": box[2] * box[3],
             "iscrowd": 0, "keypoints": kps, "num_keypoints": sum(v > 0 for v in kps[2::3])}
            for i, (image_id, box, kps) in enumerate(people)]
    category = category or {"id": 1, "name": "person", "keypoints": NAMES, "sigmas": [SIGMA] * 4}
    path = tmp_path / "person_keypoints.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [category]}))
    return path, folder


def _results(coco, shift=0.0):
    out = []
    for ann in coco.gt["annotations"]:
        kps = list(ann["keypoints"])
        kps[0::3] = [x + shift for x in kps[0::3]]
        out.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kps, "score": 0.8})
    return out


def test_perfect_keypoints_score_ap_one(tmp_path):
    coco = read_coco(*_write(tmp_path), kind="keypoints")
    metrics = coco_metrics(coco.gt, _results(coco), "keypoints", kpt_sigmas=[SIGMA] * 4)
    assert metrics == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}


def test_shifted_keypoints_lose_the_thresholds_above_their_oks(tmp_path):
    # Both people get the same box, so one shift d gives both the same OKS:
    # OKS = exp(-d^2 / (2 * area * (2 sigma)^2)) = 0.72 passes thresholds 0.5 .. 0.7 (5 of 10).
    box = PEOPLE[0][1]
    area = box[2] * box[3]
    people = [(image_id, box, kps) for image_id, _, kps in PEOPLE]
    coco = read_coco(*_write(tmp_path, people), kind="keypoints")
    shift = math.sqrt(-math.log(0.72) * 2 * area * (2 * SIGMA) ** 2)
    metrics = coco_metrics(coco.gt, _results(coco, shift), "keypoints", kpt_sigmas=[SIGMA] * 4)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.5)


def test_keypoint_lists_of_the_wrong_length_are_an_error(tmp_path):
    people = [PEOPLE[0], (2, PEOPLE[1][1], PEOPLE[1][2][:-3])]
    with pytest.raises(DataError, match="annotation 2 has 9 keypoint values; its category has 4"):
        read_coco(*_write(tmp_path, people), kind="keypoints")


def test_sigmas_come_from_the_category_then_coco_then_the_default():
    assert keypoint_sigmas([{"keypoints": NAMES, "sigmas": [0.1, 0.2, 0.3, 0.4]}], 0.05) == [0.1, 0.2, 0.3, 0.4]
    assert keypoint_sigmas([{"keypoints": COCO_PERSON_KEYPOINTS}], 0.05) == COCO_PERSON_SIGMAS
    assert keypoint_sigmas([{"keypoints": NAMES}], 0.07) == [0.07] * 4
    with pytest.raises(DataError, match="'sigmas' needs 4 positive numbers"):
        keypoint_sigmas([{"name": "p", "keypoints": NAMES, "sigmas": [0.1]}], 0.05)


def test_person_crops_map_keypoints_into_crop_pixels(tmp_path):
    coco = read_coco(*_write(tmp_path), kind="keypoints")
    dataset = PoseDataset(coco, PoseConfig(input_size=64, box_expand=1.0), cache=False)
    crop, keypoints, _ = dataset[0]
    assert crop.shape == (3, 64, 64) and crop.dtype == torch.uint8
    x0, y0, side = dataset.crop_box(0)
    assert side == 300 and (x0, y0) == (140 + 115 - 150, 20)
    assert keypoints[0].tolist() == pytest.approx([(250 - x0) * 64 / 300, (80 - y0) * 64 / 300, 2])


def test_heatmap_targets_decode_back_to_their_keypoints():
    keypoints = torch.tensor([[[10.0, 20.0, 2], [33.0, 5.0, 1], [63.0, 63.0, 2], [80.0, 10.0, 2]]])
    heatmaps, weights = gaussian_targets(keypoints, (16, 16), stride=4.0, sigma=1.5)
    assert weights.tolist() == [[1.0, 1.0, 1.0, 0.0]]  # the last one lies outside the 64 px crop
    decoded, peaks = decode_heatmaps(heatmaps, stride=4.0)
    error = (decoded[0, :3] - keypoints[0, :3, :2]).abs().max().item()
    assert error <= 2.0  # within half a heatmap pixel (stride 4)
    assert peaks[0, :3].min() > 0.8
