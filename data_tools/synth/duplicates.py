"""Planted near-duplicates: transformed copies of downstream test images in the pretraining pool.

This models test images leaking into web-scraped pretraining data. A planted
copy replaces one pretraining image at a seeded pool position, under an
ordinary key, so nothing but pixels gives it away. The test image itself (and
its annotations) is rendered as usual; the copy is a transform of it,
downscaled to the pool's image size, labelled with the fine classes of the
objects it still shows (plus the world's label noise).

Transforms stay mild enough for a good near-duplicate detector to find every
copy: crops keep >= 70% of the area, rotations are <= 10 degrees.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from data_tools.synth.config import WorldConfig
from data_tools.synth.vocab import stream_rng

DATASETS = ("detection", "segmentation", "pose")
Window = tuple[int, int, int, int]  # x0, y0, x1, y1 of the source image the copy shows


@dataclass(frozen=True)
class PlantedCopy:
    """A test image ``test_index`` of ``dataset`` copied to pool position ``pool_index``."""

    dataset: str
    test_index: int
    pool_index: int
    transform: str


def plan_duplicates(config: WorldConfig) -> list[PlantedCopy]:
    """Which test images get copies, where they go in the pool and with which transform.

    round(fraction * test size) images per dataset; transforms are dealt in
    turn over all copies (then shuffled), so each kind gets a fair share.
    """
    rng = stream_rng(config.seed, "duplicates")
    chosen: list[tuple[str, int]] = []
    for dataset in DATASETS:
        test_size = getattr(config, dataset).test
        count = round(config.duplicates.fraction * test_size)
        chosen.extend((dataset, int(i)) for i in sorted(rng.choice(test_size, size=count, replace=False)))
    names = config.duplicates.transforms
    transforms = [names[i % len(names)] for i in range(len(chosen))] if names else []
    transforms = [transforms[i] for i in rng.permutation(len(transforms))]
    positions = rng.choice(config.pretrain.images, size=len(chosen), replace=False)
    return [PlantedCopy(d, i, int(p), t) for (d, i), p, t in zip(chosen, positions, transforms)]


def _resize(image: Image.Image, rng: np.random.Generator, objects: list[np.ndarray]) -> tuple[Image.Image, Window]:
    w, h = image.size
    scale = rng.uniform(0.45, 0.7)  # lose resolution, then come back up: a re-hosted thumbnail
    small = image.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BILINEAR)
    return small.resize((w, h), Image.BICUBIC), (0, 0, w, h)


def _crop(image: Image.Image, rng: np.random.Generator, objects: list[np.ndarray]) -> tuple[Image.Image, Window]:
    w, h = image.size
    area, ratio = rng.uniform(0.7, 0.85), rng.uniform(0.85, 1.18)
    cw, ch = min(w, round(w * np.sqrt(area * ratio))), min(h, round(h * np.sqrt(area / ratio)))
    # Keep the centre of the largest object inside, so the copy still shows what the test image shows.
    cx, cy = _centroid(max(objects, key=lambda m: int(m.sum()))) if objects else (w / 2, h / 2)
    x_lo, x_hi = max(0, int(np.ceil(cx - cw + 1))), min(w - cw, int(cx))
    y_lo, y_hi = max(0, int(np.ceil(cy - ch + 1))), min(h - ch, int(cy))
    x0 = int(rng.integers(x_lo, x_hi + 1)) if x_hi >= x_lo else (w - cw) // 2
    y0 = int(rng.integers(y_lo, y_hi + 1)) if y_hi >= y_lo else (h - ch) // 2
    return image.crop((x0, y0, x0 + cw, y0 + ch)), (x0, y0, x0 + cw, y0 + ch)


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean())


def _flip(image: Image.Image, rng: np.random.Generator, objects: list[np.ndarray]) -> tuple[Image.Image, Window]:
    return image.transpose(Image.FLIP_LEFT_RIGHT), (0, 0, *image.size)


def _colour(image: Image.Image, rng: np.random.Generator, objects: list[np.ndarray]) -> tuple[Image.Image, Window]:
    pixels = np.asarray(image, dtype=np.float32)
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * rng.uniform(0.6, 1.4)  # saturation
    mean = pixels.mean()
    pixels = mean + (pixels - mean) * rng.uniform(0.75, 1.25)  # contrast
    pixels = pixels * rng.uniform(0.75, 1.25)  # brightness
    hsv = np.asarray(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-10, 11))) % 256  # small hue shift
    return Image.frombytes("HSV", image.size, hsv.tobytes()).convert("RGB"), (0, 0, *image.size)


def _rotate(image: Image.Image, rng: np.random.Generator, objects: list[np.ndarray]) -> tuple[Image.Image, Window]:
    angle = rng.uniform(3.0, 10.0) * rng.choice([-1.0, 1.0])
    pixels = np.asarray(image)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).mean(axis=0)
    fill = tuple(int(c) for c in edge)
    return image.rotate(angle, resample=Image.BILINEAR, fillcolor=fill), (0, 0, *image.size)


def _jpeg(image: Image.Image, rng: np.random.Generator, objects: list[np.ndarray]) -> tuple[Image.Image, Window]:
    return image, (0, 0, *image.size)  # the low quality is applied by make_copy's final encode


# name -> (image, rng, object masks) -> (transformed image, window of the source it shows)
TRANSFORMS: dict[str, Callable[..., tuple[Image.Image, Window]]] = {
    "resize": _resize, "crop": _crop, "flip": _flip, "jpeg": _jpeg, "colour": _colour, "rotate": _rotate,
}
LOW_JPEG_QUALITY = (12, 25)


def make_copy(image: np.ndarray, objects: list[np.ndarray], transform: str, seed: int, pool_index: int,
              out_size: int, jpeg_quality: int) -> tuple[bytes, Window]:
    """JPEG bytes of the transformed copy at ``out_size``, and the source window it shows.

    ``objects`` are the visible masks of the test image's objects (used by the
    crop to keep the main object in view). The random stream is (seed,
    "planted", pool_index), so the copy does not depend on worker order.
    """
    rng = stream_rng(seed, "planted", pool_index)
    copy, window = TRANSFORMS[transform](Image.fromarray(image), rng, objects)
    copy = copy.resize((out_size, out_size), Image.BICUBIC)
    quality = int(rng.integers(*LOW_JPEG_QUALITY)) if transform == "jpeg" else jpeg_quality
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), window


def objects_in_window(objects: list[np.ndarray], window: Window, min_share: float = 0.3) -> list[int]:
    """Indices of objects with at least ``min_share`` of their visible pixels inside ``window``."""
    x0, y0, x1, y1 = window
    kept = []
    for i, mask in enumerate(objects):
        total = int(mask.sum())
        if total and int(mask[y0:y1, x0:x1].sum()) >= min_share * total:
            kept.append(i)
    return kept
