"""Training augmentation for every task, applied to an image and its targets together.

``train.augment`` names a level, from weakest to strongest (Zoph et al. 2020
compare pretraining and self-training across such levels):

- ``none``: the image as read.
- ``flip``: a horizontal flip with probability 0.5 when ``train.hflip`` (what
  fine-tuning always did; there is no crop at this level).
- ``randaugment``: ``flip``, then RandAugment (Cubuk et al. 2020): two ops
  drawn from 14 at ``train.augment_magnitude`` (0..30, the paper's scale).
- ``lsj``: ``flip``, then large-scale jitter (Ghiasi et al. 2021): resize by
  a factor drawn from ``train.lsj_scale`` (0.1..2.0), then crop or pad back to
  the input's size at a random offset.
- ``lsj_randaugment``: ``lsj`` then RandAugment.

Every geometric step moves the targets with the image: boxes (xyxy, clipped
to the image; boxes left with no area are dropped with their labels), masks
(nearest-neighbour; uncovered pixels become 255, "ignore"), keypoints (those
that leave the image become invisible; a flip swaps left and right ones).
Photometric ops touch the image only. Randomness comes from torch's global
generator, which fine-tuning seeds with ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from scaling.tasks.config import AUGMENT_LEVELS  # noqa: F401 - the names, re-exported

MAX_MAGNITUDE = 30  # RandAugment's magnitude scale
IGNORE = 255


@dataclass
class Sample:
    """One training image and whichever targets its task has (None: the task has none)."""

    image: torch.Tensor                     # uint8 (3, H, W)
    boxes: torch.Tensor | None = None       # float (N, 4) xyxy, pixels
    labels: torch.Tensor | None = None      # (N,) one per box
    mask: torch.Tensor | None = None        # int64 (H, W) class per pixel, 255 = ignore
    keypoints: torch.Tensor | None = None   # float (N, K, 3) x, y, visibility (0 = not labelled)


def flip_pairs(names: list[str]) -> list[int]:
    """For each keypoint, the index it becomes after a horizontal flip ("left_x" <-> "right_x")."""
    index = {name: i for i, name in enumerate(names)}
    swapped = []
    for i, name in enumerate(names):
        if "left" in name:
            swapped.append(index.get(name.replace("left", "right"), i))
        elif "right" in name:
            swapped.append(index.get(name.replace("right", "left"), i))
        else:
            swapped.append(i)
    return swapped


# --------------------------------------------------------------------------- geometry


def _chance(p: float) -> bool:
    return bool(torch.rand(()) < p)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def hflip(s: Sample, pairs: list[int] | None) -> Sample:
    """Mirror the image; x -> W - x for boxes and keypoints; left and right keypoints trade places."""
    width = s.image.shape[-1]
    out = replace(s, image=s.image.flip(-1))
    if s.boxes is not None:
        boxes = s.boxes.clone()
        boxes[:, [0, 2]] = width - s.boxes[:, [2, 0]]
        out.boxes = boxes
    if s.mask is not None:
        out.mask = s.mask.flip(-1)
    if s.keypoints is not None:
        points = s.keypoints.clone()
        points[..., 0] = width - points[..., 0]
        if pairs is not None:
            points = points[:, pairs]
        out.keypoints = points
    return out


def _finish_geometry(s: Sample) -> Sample:
    """Clip boxes to the image and drop empty ones; hide keypoints that left the image."""
    h, w = s.image.shape[-2:]
    if s.boxes is not None and len(s.boxes):
        boxes = s.boxes.clone()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        s.boxes = boxes[keep]
        if s.labels is not None:
            s.labels = s.labels[keep]
    if s.keypoints is not None:
        points = s.keypoints.clone()
        x, y = points[..., 0], points[..., 1]
        outside = (x < 0) | (x >= w) | (y < 0) | (y >= h)
        points[..., 2] = torch.where(outside, torch.zeros_like(points[..., 2]), points[..., 2])
        s.keypoints = points
    return s


def scale_jitter(s: Sample, scale_range: tuple[float, float]) -> Sample:
    """Large-scale jitter: resize by s ~ U(scale_range), then crop or pad to the original size."""
    h, w = s.image.shape[-2:]
    factor = _uniform(*scale_range)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    sx, sy = nw / w, nh / h
    image = F.resize(s.image, [nh, nw], antialias=True)
    # Where the resized image goes on the (h, w) canvas: a random crop when larger, a random place when smaller.
    ox = -int(torch.randint(0, nw - w + 1, ())) if nw > w else int(torch.randint(0, w - nw + 1, ()))
    oy = -int(torch.randint(0, nh - h + 1, ())) if nh > h else int(torch.randint(0, h - nh + 1, ()))
    canvas = torch.zeros_like(s.image)
    _paste(canvas, image, ox, oy)
    out = replace(s, image=canvas)
    if s.mask is not None:
        mask = F.resize(s.mask[None], [nh, nw], interpolation=F.InterpolationMode.NEAREST)[0]
        out.mask = torch.full_like(s.mask, IGNORE)
        _paste(out.mask, mask, ox, oy)
    shift = torch.tensor([sx, sy, sx, sy]), torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
    if s.boxes is not None:
        out.boxes = s.boxes * shift[0] + shift[1]
    if s.keypoints is not None:
        points = s.keypoints.clone()
        points[..., 0] = points[..., 0] * sx + ox
        points[..., 1] = points[..., 1] * sy + oy
        out.keypoints = points
    return _finish_geometry(out)


def _paste(canvas: torch.Tensor, part: torch.Tensor, ox: int, oy: int) -> None:
    """Copy ``part`` onto ``canvas`` with its top-left corner at (ox, oy), cutting what falls outside."""
    h, w = canvas.shape[-2:]
    ph, pw = part.shape[-2:]
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + pw, w), min(oy + ph, h)
    if x1 > x0 and y1 > y0:
        canvas[..., y0:y1, x0:x1] = part[..., y0 - oy:y1 - oy, x0 - ox:x1 - ox]


def affine(s: Sample, *, angle: float = 0.0, translate: tuple[float, float] = (0.0, 0.0),
           shear: tuple[float, float] = (0.0, 0.0)) -> Sample:
    """One affine map (degrees, pixels) of the image, its mask (fill 255), boxes and keypoints."""
    h, w = s.image.shape[-2:]
    kwargs = dict(angle=angle, translate=list(translate), scale=1.0, shear=list(shear))
    out = replace(s, image=F.affine(s.image, **kwargs, fill=0))
    if s.mask is not None:
        out.mask = F.affine(tv_tensors.Mask(s.mask), **kwargs, fill=IGNORE).as_subclass(torch.Tensor)
    if s.boxes is not None and len(s.boxes):
        boxes = tv_tensors.BoundingBoxes(s.boxes, format="XYXY", canvas_size=(h, w))
        out.boxes = F.affine(boxes, **kwargs).as_subclass(torch.Tensor).float()
    if s.keypoints is not None and s.keypoints.numel():
        flat = tv_tensors.KeyPoints(s.keypoints[..., :2].reshape(-1, 2), canvas_size=(h, w))
        moved = F.affine(flat, **kwargs).as_subclass(torch.Tensor).reshape(s.keypoints.shape[:-1] + (2,))
        out.keypoints = torch.cat([moved, s.keypoints[..., 2:]], -1)
    return _finish_geometry(out)


# --------------------------------------------------------------------------- RandAugment


def _signed(value: float) -> float:
    return value if _chance(0.5) else -value


def _photometric(fn: Callable[[torch.Tensor, float], torch.Tensor], strength: Callable[[float], float]):
    return lambda s, m: replace(s, image=fn(s.image, strength(m)))


#: RandAugment's ops (Cubuk et al. 2020, the torchvision set): name -> f(sample, magnitude in [0, 1]).
RANDAUGMENT_OPS: dict[str, Callable[[Sample, float], Sample]] = {
    "identity": lambda s, m: s,
    "shear_x": lambda s, m: affine(s, shear=(math.degrees(math.atan(_signed(0.3 * m))), 0.0)),
    "shear_y": lambda s, m: affine(s, shear=(0.0, math.degrees(math.atan(_signed(0.3 * m))))),
    "translate_x": lambda s, m: affine(s, translate=(_signed(0.45 * m * s.image.shape[-1]), 0.0)),
    "translate_y": lambda s, m: affine(s, translate=(0.0, _signed(0.45 * m * s.image.shape[-2]))),
    "rotate": lambda s, m: affine(s, angle=_signed(30.0 * m)),
    "brightness": _photometric(F.adjust_brightness, lambda m: 1.0 + _signed(0.9 * m)),
    "color": _photometric(F.adjust_saturation, lambda m: 1.0 + _signed(0.9 * m)),
    "contrast": _photometric(F.adjust_contrast, lambda m: 1.0 + _signed(0.9 * m)),
    "sharpness": _photometric(F.adjust_sharpness, lambda m: 1.0 + _signed(0.9 * m)),
    "posterize": _photometric(F.posterize, lambda m: int(8 - round(4 * m))),
    "solarize": _photometric(F.solarize, lambda m: 255.0 * (1.0 - m)),
    "autocontrast": _photometric(lambda img, _: F.autocontrast(img), lambda m: 0.0),
    "equalize": _photometric(lambda img, _: F.equalize(img), lambda m: 0.0),
}


def randaugment(s: Sample, magnitude: int, num_ops: int = 2) -> Sample:
    """``num_ops`` ops drawn uniformly with replacement, each at ``magnitude`` / 30 of its range."""
    names = list(RANDAUGMENT_OPS)
    for _ in range(num_ops):
        s = RANDAUGMENT_OPS[names[int(torch.randint(len(names), ()))]](s, magnitude / MAX_MAGNITUDE)
    return s


# --------------------------------------------------------------------------- the level


class Augment:
    """The augmentation a ``train`` config names, as a callable on a :class:`Sample`.

    ``pairs``: the keypoint flip permutation (:func:`flip_pairs`), for pose.
    """

    def __init__(self, train, pairs: list[int] | None = None) -> None:
        self.level = train.augment
        self.flip = train.hflip and self.level != "none"
        self.magnitude = train.augment_magnitude
        self.scale_range = (float(train.lsj_scale[0]), float(train.lsj_scale[1]))
        self.pairs = pairs

    def __call__(self, s: Sample) -> Sample:
        if self.flip and _chance(0.5):
            s = hflip(s, self.pairs)
        if self.level in ("lsj", "lsj_randaugment"):
            s = scale_jitter(s, self.scale_range)
        if self.level in ("randaugment", "lsj_randaugment"):
            s = randaugment(s, self.magnitude)
        return s
