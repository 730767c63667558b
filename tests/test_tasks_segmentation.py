"""Segmentation: mIoU from a hand-computed confusion matrix, VOC reading and its bad inputs, DeepLab."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from datascale.errors import ConfigError, DataError
from scaling.models.backbones import build_backbone
from datascale.formats.voc import read_mask
from scaling.tasks.segmentation import (DeepLab, SegmentationTask, class_names, confusion_matrix, iou_metrics,
                                        read_voc)


def test_miou_matches_a_hand_computed_confusion_matrix():
    target = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    prediction = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
    confusion = confusion_matrix(target, prediction, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2] = 1, 1, 2, 1  # the 255 pixel is ignored
    np.testing.assert_array_equal(confusion, expected)
    metrics = iou_metrics(confusion, ["bg", "cat", "dog", "cow"])
    # IoU = TP / (row + column - TP): bg 1 / 2, cat 2 / 3, dog 1 / 1; cow never occurs: no IoU.
    assert metrics["IoU/bg"] == pytest.approx(0.5)
    assert metrics["IoU/cat"] == pytest.approx(2 / 3)
    assert metrics["IoU/dog"] == pytest.approx(1.0)
    assert "IoU/cow" not in metrics
    assert metrics["mIoU"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(4 / 5)


def _voc(tmp_path, ids=("coffee", "chelsea")):
    for sub in ("JPEGImages", "SegmentationClass"):
        (tmp_path / sub).mkdir(exist_ok=True)
    for name in ids:
        photo = getattr(skdata, name)()
        Image.fromarray(photo).save(tmp_path / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros(photo.shape[:2], dtype=np.uint8)
        mask[50:150, 100:300] = 1
        mask[:3] = 255
        Image.fromarray(mask, mode="L").save(tmp_path / "SegmentationClass" / f"{name}.png")
    (tmp_path / "labels.txt").write_text("background\nthing\n")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(ids) + "\n")
    return listing, tmp_path / "JPEGImages"


def test_missing_files_and_mismatched_masks_are_skipped_and_counted(tmp_path):
    listing, images = _voc(tmp_path, ("coffee", "chelsea", "astronaut", "rocket"))
    listing.write_text("coffee\nchelsea\nastronaut\nrocket\ncoffee\nnowhere\n")
    (tmp_path / "SegmentationClass" / "astronaut.png").unlink()
    Image.new("L", (10, 10)).save(tmp_path / "SegmentationClass" / "rocket.png")
    voc = read_voc(listing, images, class_names(images, 0))
    assert voc.ids == ["coffee", "chelsea"]
    assert voc.skipped == {"mask missing on disk": 1, "mask size differs from its image": 1,
                           "id listed twice": 1, "image missing on disk": 1}


def test_nothing_usable_is_an_error(tmp_path):
    listing, images = _voc(tmp_path)
    listing.write_text("nowhere\n")
    with pytest.raises(DataError, match="none of the 1 ids"):
        read_voc(listing, images, ["background", "thing"])


def test_colour_masks_and_unknown_class_values_are_errors(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="mask mode RGB"):
        read_mask(tmp_path / "rgb.png", 21)
    Image.fromarray(np.full((4, 4), 30, dtype=np.uint8), mode="L").save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"values \[30\] are neither a class \(0..20\) nor 255"):
        read_mask(tmp_path / "bad.png", 21)


def test_class_names_need_labels_txt_or_a_count(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(ConfigError, match="segmentation.num_classes"):
        class_names(tmp_path / "JPEGImages", 0)
    assert class_names(tmp_path / "JPEGImages", 3) == ["class_0", "class_1", "class_2"]
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match="names 2 classes"):
        class_names(tmp_path / "JPEGImages", 3)


def test_deeplab_sums_four_atrous_branches_at_output_stride_8():
    backbone = build_backbone("resnet_demo", replace_stride_with_dilation=(False, True, True))
    model = DeepLab(backbone, num_classes=5, rates=[1, 2, 3, 4], meta={})
    assert [b.dilation for b in model.branches] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    assert backbone.forward_stages(model.normalize(images))["conv5"].shape[-1] == 8
    assert model(images).shape == (2, 5, 64, 64)


def test_a_batch_of_only_ignored_pixels_has_zero_loss_not_nan():
    model = DeepLab(build_backbone("resnet_demo"), num_classes=3, rates=[1], meta={})
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    masks = torch.full((2, 32, 32), 255, dtype=torch.int64)
    loss = SegmentationTask().loss(model, (images, masks, [0, 1]))["loss_ce"]
    assert torch.isfinite(loss) and loss.item() == 0.0
