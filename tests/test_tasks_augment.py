"""Augmentation moves targets with the image (train.augment), and labelled fractions are nested."""

from __future__ import annotations

import random

import pytest
import torch

from datascale.config import load_config
from datascale.errors import ConfigError
from scaling.tasks.augment import AUGMENT_LEVELS, Augment, Sample, flip_pairs, hflip, scale_jitter
from scaling.tasks.common import labelled_subset
from scaling.tasks.config import DataConfig, FinetuneConfig, TrainConfig

OBJECT, LEFT, RIGHT = 1, 2, 3


def _scene(h: int = 48, w: int = 64) -> Sample:
    """A textured image whose mask holds one rectangle (OBJECT) with two marker pixels inside it;
    the box is the rectangle's, the keypoints sit on the markers' centres."""
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(h, w, dtype=torch.int64)
    x0, y0, x1, y1 = 10, 8, 40, 30
    mask[y0:y1, x0:x1] = OBJECT
    mask[11:16, 12:17] = LEFT  # 5x5 markers, so nearest-neighbour resizing keeps them
    mask[19:24, 32:37] = RIGHT
    keypoints = torch.tensor([[[14.5, 13.5, 2.0], [34.5, 21.5, 2.0]]])
    return Sample(image, boxes=torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
                  labels=torch.tensor([1]), mask=mask, keypoints=keypoints)


def _extent(mask: torch.Tensor, values: tuple[int, ...]) -> tuple[float, float, float, float] | None:
    hit = torch.zeros_like(mask, dtype=torch.bool)
    for value in values:
        hit |= mask == value
    ys, xs = torch.nonzero(hit, as_tuple=True)
    if not len(xs):
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _train(level: str, **kw) -> TrainConfig:
    return TrainConfig(augment=level, **kw)


@pytest.mark.parametrize("level", AUGMENT_LEVELS)
def test_box_covers_its_object_mask_after_every_level(level):
    torch.manual_seed(1)
    augment = Augment(_train(level, augment_magnitude=20), flip_pairs(["left_x", "right_x"]))
    for _ in range(40):
        out = augment(_scene())
        extent = _extent(out.mask, (OBJECT, LEFT, RIGHT))
        assert out.image.shape == (3, 48, 64) and out.mask.shape == (48, 64)
        if extent is None or min(extent[2] - extent[0], extent[3] - extent[1]) < 2:
            continue  # cropped away (LSJ) or translated out: the box may be dropped
        assert len(out.boxes) == 1 and out.labels.tolist() == [1]
        (bx0, by0, bx1, by1), (mx0, my0, mx1, my1) = out.boxes[0].tolist(), extent
        slack = 1.5
        assert bx0 <= mx0 + slack and by0 <= my0 + slack and bx1 >= mx1 - slack and by1 >= my1 - slack
        if level in ("none", "flip", "lsj"):  # no rotation or shear: the box stays tight
            assert abs(bx0 - mx0) <= slack + 0.5 and abs(bx1 - mx1) <= slack + 0.5


@pytest.mark.parametrize("level", ["flip", "lsj"])
def test_keypoints_stay_on_their_markers_and_a_flip_swaps_left_and_right(level):
    torch.manual_seed(2)
    pairs = flip_pairs(["left_x", "right_x"])
    assert pairs == [1, 0]
    augment = Augment(_train(level, lsj_scale=[0.8, 2.0]), pairs)
    flips = 0
    for _ in range(30):
        out = augment(_scene())
        on = {}
        for index, (x, y, visible) in enumerate(out.keypoints[0].tolist()):
            if visible:
                on[index] = int(out.mask[int(y), int(x)])
                assert on[index] in (LEFT, RIGHT), (level, index, x, y, on[index])
        if len(on) == 2:
            assert on[0] != on[1]
            left, right = _extent(out.mask, (LEFT,)), _extent(out.mask, (RIGHT,))
            mirrored = left[0] > right[0]
            # Mirrored, the point named left_x is the old right_x point: it sits on the RIGHT marker.
            assert on[0] == (RIGHT if mirrored else LEFT)
            flips += mirrored
    assert 0 < flips < 30


def test_flip_mirrors_boxes_and_swaps_named_pairs():
    s = _scene()
    out = hflip(s, [1, 0])
    assert out.boxes.tolist() == [[64 - 40, 8, 64 - 10, 30]]
    assert out.keypoints[0, 0, 0].item() == pytest.approx(64 - 34.5)  # old right point, mirrored
    assert torch.equal(out.mask, s.mask.flip(-1))
    assert flip_pairs(["head", "left_hip", "right_hip", "left", "right"]) == [0, 2, 1, 4, 3]


def test_scale_jitter_pads_masks_with_ignore_and_drops_boxes_cut_away():
    torch.manual_seed(0)
    small = scale_jitter(_scene(), (0.25, 0.25))
    assert (small.mask == 255).float().mean() > 0.8  # 1/16 of the canvas is image
    assert small.boxes.shape == (1, 4)
    torch.manual_seed(0)
    dropped = 0
    for _ in range(50):
        big = scale_jitter(_scene(), (4.0, 4.0))
        if _extent(big.mask, (OBJECT, LEFT, RIGHT)) is None:
            dropped += 1
            assert len(big.boxes) == 0 and len(big.labels) == 0
    assert dropped > 0


def test_labelled_fractions_are_nested_sized_and_independent_of_order():
    keys = [f"img_{i:04d}.jpg" for i in range(1000)]
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    chosen = {}
    for fraction in (0.2, 0.5, 1.0):
        data = DataConfig(labelled_fraction=fraction)
        picked = {keys[i] for i in labelled_subset(keys, data)}
        assert len(picked) == round(fraction * 1000)
        assert picked == {shuffled[i] for i in labelled_subset(shuffled, data)}
        chosen[fraction] = picked
    assert chosen[0.2] < chosen[0.5] < chosen[1.0]
    other = {keys[i] for i in labelled_subset(keys, DataConfig(labelled_fraction=0.2, labelled_salt="x"))}
    assert other != chosen[0.2]
    assert labelled_subset(keys[:3], DataConfig(labelled_fraction=0.01)) != []


@pytest.mark.parametrize("override, key", [("train.augment=strong", "augment"),
                                           ("train.augment_magnitude=31", "augment_magnitude"),
                                           ("train.lsj_scale=[2.0, 0.1]", "lsj_scale"),
                                           ("data.labelled_fraction=0", "labelled_fraction")])
def test_bad_augment_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(FinetuneConfig, "finetune/detection", [override])
