"""Downstream datasets of a tiny world in real formats: COCO detection and keypoints load in
pycocotools and score AP 1.0 against themselves, masks agree with boxes and with the pixels,
VOC palette masks are valid, keypoint flags are right."""

import contextlib
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datascale.config import load_config
from data_tools.synth.config import WorldConfig
from data_tools.synth.downstream import segmentation_mask
from data_tools.synth.items import downstream_scene, make_plan
from data_tools.synth.scenes import Placed, Scene
from data_tools.synth.world import generate_world

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    config = load_config(WorldConfig, "world/tiny", ["pretrain.images=100", "eval.images=10"])
    generate_world(config, out, workers=1)
    return out, config


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _evaluate(gt, predictions, iou_type, sigmas=None):
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(predictions)
        evaluator = COCOeval(gt, dt, iou_type)
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("split", SPLITS)
def test_detection_coco_loads_and_scores_perfectly_against_itself(world, split):
    out, config = world
    gt = _coco(out / "detection" / "annotations" / f"instances_{split}.json")
    assert len(gt.getImgIds()) == getattr(config.detection, split)
    assert sorted(gt.getCatIds()) == list(range(1, config.classes.families + 1))
    anns = gt.loadAnns(gt.getAnnIds())
    assert anns and all(a["iscrowd"] == 0 for a in anns)
    boxes = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in anns]
    assert _evaluate(gt, boxes, "bbox")[0] == pytest.approx(1.0)
    masks = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
              "score": 1.0} for a in anns]
    assert _evaluate(gt, masks, "segm")[0] == pytest.approx(1.0)
    shifted = [{**b, "bbox": [b["bbox"][0] + b["bbox"][2] / 2, *b["bbox"][1:]]} for b in boxes]
    assert _evaluate(gt, shifted, "bbox")[0] < 0.5


def test_detection_masks_agree_with_boxes_and_images(world):
    out, config = world
    for split in SPLITS:
        gt = _coco(out / "detection" / "annotations" / f"instances_{split}.json")
        for image in gt.loadImgs(gt.getImgIds()):
            path = out / "detection" / "images" / split / image["file_name"]
            with Image.open(path) as pil:
                assert pil.size == (image["width"], image["height"]) == (config.detection.image_size,) * 2
            for ann in gt.loadAnns(gt.getAnnIds(imgIds=image["id"])):
                mask = gt.annToMask(ann)
                assert mask.shape == (image["height"], image["width"])
                rows, cols = np.nonzero(mask)
                assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1,
                                       rows.max() - rows.min() + 1]
                assert ann["area"] == int(mask.sum()) > 0
                assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]


def _edge(labels):
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge


def test_segmentation_masks_are_palette_pngs_that_follow_object_edges(world):
    out, config = world
    root = out / "segmentation"
    names = (root / "labels.txt").read_text().splitlines()
    assert len(names) == config.classes.families + 1 == 21 and names[0] == "background"
    edge_gradient, flat_gradient = [], []
    for split in SPLITS:
        ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids) == getattr(config.segmentation, split)
        for image_id in ids:
            with Image.open(root / "SegmentationClass" / f"{image_id}.png") as png:
                assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]
                labels = np.asarray(png)
            size = config.segmentation.image_size
            assert labels.shape == (size, size)
            assert labels.max() <= config.classes.families and (labels > 0).any()
            grey = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("L"), dtype=float)
            gradient = np.zeros_like(grey)
            gradient[1:] = np.abs(grey[1:] - grey[:-1])
            gradient[:, 1:] = np.maximum(gradient[:, 1:], np.abs(grey[:, 1:] - grey[:, :-1]))
            edge = _edge(labels)
            edge_gradient.append(gradient[edge].mean())
            flat_gradient.append(gradient[~edge].mean())
    # Class borders in the masks sit on colour edges in the photos.
    assert np.mean(edge_gradient) > 2.5 * np.mean(flat_gradient)


def test_segmentation_masks_match_the_rendered_objects(world):
    out, config = world
    plan = make_plan(config)
    for index in range(5):
        scene = downstream_scene(plan, "segmentation", "val", index)
        with Image.open(out / "segmentation" / "SegmentationClass" / f"seg_val_{index + 1:06d}.png") as png:
            labels = np.asarray(png)
        for obj in scene.objects:
            visible = scene.visible_mask(obj)
            assert (labels[visible] == plan.classes.family[obj.leaf] + 1).all()
        assert (labels[scene.idmap == 0] == 0).all()


def test_void_border_marks_only_class_borders():
    idmap = np.zeros((20, 20), dtype=np.int16)
    idmap[5:15, 5:15] = 1

    class _Classes:
        family = np.array([6])

    scene = Scene(np.zeros((20, 20, 3), np.uint8), idmap, [Placed(0, 1, 100)])
    exact = segmentation_mask(scene, _Classes, void_border=0)
    assert set(np.unique(exact)) == {0, 7}
    void = segmentation_mask(scene, _Classes, void_border=1)
    assert (void == 255).sum() == 40 + 36  # the 4-connected rings just outside and just inside the square
    assert void[10, 10] == 7 and void[0, 0] == 0 and void[4, 10] == 255 and void[5, 10] == 255


def test_pose_keypoints_have_coco_structure_and_right_flags(world):
    out, config = world
    flags_seen = set()
    for split in SPLITS:
        gt = _coco(out / "pose" / "annotations" / f"person_keypoints_{split}.json")
        category = gt.loadCats(1)[0]
        assert len(category["keypoints"]) == len(category["sigmas"]) == 14
        assert all(1 <= a <= 14 and 1 <= b <= 14 for a, b in category["skeleton"])
        anns = gt.loadAnns(gt.getAnnIds())
        assert anns
        for ann in anns:
            kp = np.asarray(ann["keypoints"], dtype=float).reshape(14, 3)
            flags = kp[:, 2].astype(int)
            flags_seen.update(flags.tolist())
            assert set(flags.tolist()) <= {0, 1, 2}
            assert ann["num_keypoints"] == int((flags > 0).sum()) > 0
            assert (kp[flags == 0, :2] == 0).all()
            mask = gt.annToMask(ann)
            for x, y, v in kp[flags > 0]:
                col, row = int(x), int(y)
                assert 0 <= col < mask.shape[1] and 0 <= row < mask.shape[0]
                assert bool(mask[row, col]) == (v == 2), "visible keypoints lie on the figure, hidden ones do not"
        predictions = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
                       for a in anns]
        assert _evaluate(gt, predictions, "keypoints", category["sigmas"])[0] == pytest.approx(1.0)
    assert {1, 2} <= flags_seen
