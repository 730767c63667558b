"""Scenes: place classed objects on a cluttered background with bounded occlusion.

A scene is drawn back to front. Each object is placed by rejection sampling:
a placement is accepted only if every object already drawn keeps at least
``render.min_visible`` of its pixels, so every label stays visible and every
annotation describes something a model can see. An object that finds no
place in a few tries is left out and counted (``dropped``). The ``idmap``
(0 = background, i = i-th placed object) gives exact instance masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_tools.synth.config import RenderConfig
from data_tools.synth.figures import BODY_PLANS, POSE_CLASSES, figure_keypoints, figure_mask, random_pose
from data_tools.synth.render import background, band_colour, finish, paint, shape_mask, trim_colour
from data_tools.synth.vocab import COLOURS, TEXTURES, VARIANTS, WorldClasses, variant_look

PLACEMENT_TRIES = 8
MIN_OBJECT_PIXELS = 12


@dataclass(frozen=True)
class SceneStyle:
    """Object scales as fractions of the image side, and how far objects may leave the frame."""

    shape_radius: tuple[float, float]
    figure_height: tuple[float, float]
    max_angle: float
    figure_angle: float
    margin: float  # the centre stays >= margin * radius from each border (< 1 allows truncation)


STYLES: dict[str, SceneStyle] = {
    # Pretraining/eval images: one or two large objects, like a web photo's subject.
    "pool": SceneStyle((0.17, 0.31), (0.55, 0.9), 0.8, 0.25, 0.35),
    # Detection/segmentation: several smaller objects, mostly inside the frame.
    "downstream": SceneStyle((0.1, 0.22), (0.4, 0.7), 0.8, 0.25, 0.6),
    # Pose: large figures (some limbs may leave the frame), small occluders.
    "pose": SceneStyle((0.07, 0.14), (0.5, 0.8), 0.8, 0.3, 0.55),
}


@dataclass
class Placed:
    """One drawn object: its leaf position, its id in the idmap and its drawn pixel count."""

    leaf: int
    object_id: int
    area: int
    keypoints: np.ndarray | None = None


@dataclass
class Scene:
    """A rendered image (uint8 H x W x 3), its instance idmap and its objects."""

    image: np.ndarray
    idmap: np.ndarray
    objects: list[Placed] = field(default_factory=list)
    dropped: int = 0

    def visible_mask(self, obj: Placed) -> np.ndarray:
        """Boolean (H, W) mask of the pixels where ``obj`` is visible (on top)."""
        return self.idmap == obj.object_id


def _centre(rng: np.random.Generator, size: int, reach: float, margin: float) -> tuple[float, float]:
    lo, hi = margin * reach, size - margin * reach
    if hi <= lo:
        return size / 2, size / 2
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _draw_candidate(classes: WorldClasses, leaf: int, size: int, style: SceneStyle,
                    rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A candidate mask for ``leaf`` at a random place, plus what paint() needs."""
    family = int(classes.family[leaf])
    variant = int(classes.variant[leaf])
    aspect = VARIANTS[variant][1]
    if classes.family_is_figure[family]:
        plan = BODY_PLANS[classes.family_keys[family]]
        height = size * rng.uniform(*style.figure_height)
        angle = rng.uniform(-style.figure_angle, style.figure_angle)
        centre = _centre(rng, size, height / 2, style.margin)
        # A figure's variant is its pose; every figure has the same build.
        keypoints = figure_keypoints(plan, random_pose(rng, POSE_CLASSES[variant]), centre, height, angle)
        mask = figure_mask(plan, keypoints, height, 1.0, (size, size))
        return mask, {"centre": centre, "radius": height / 3, "angle": angle, "keypoints": keypoints}
    radius = size * rng.uniform(*style.shape_radius)
    angle = rng.uniform(-style.max_angle, style.max_angle)
    centre = _centre(rng, size, radius, style.margin)
    mask = shape_mask(classes.family_keys[family], (size, size), centre, radius, aspect, angle)
    return mask, {"centre": centre, "radius": radius, "angle": angle, "keypoints": None}


def compose(classes: WorldClasses, leaves: list[int], size: int, style: SceneStyle,
            render: RenderConfig, rng: np.random.Generator) -> Scene:
    """Render a ``size`` x ``size`` scene with the given leaf classes, in drawing order.

    Time is O(objects x tries x pixels); memory a few (H, W) arrays.
    """
    canvas = background(rng, size, size, render.clutter)
    idmap = np.zeros((size, size), dtype=np.int16)
    visible = np.zeros(len(leaves) + 1, dtype=np.int64)  # pixels each placed object still shows
    area = np.zeros(len(leaves) + 1, dtype=np.int64)
    placed: list[Placed] = []
    dropped = 0
    for leaf in leaves:
        object_id = len(placed) + 1
        for _ in range(PLACEMENT_TRIES):
            mask, geometry = _draw_candidate(classes, leaf, size, style, rng)
            pixels = int(mask.sum())
            if pixels < MIN_OBJECT_PIXELS:
                continue
            lost = np.bincount(idmap[mask], minlength=len(visible))[:len(visible)]
            after = visible - lost
            if np.any(after[1:object_id] < render.min_visible * area[1:object_id]):
                continue
            base = band_colour(rng, COLOURS[int(classes.colour[leaf])][1])
            group = classes.family_groups[int(classes.family[leaf])]
            trim = trim_colour(rng, variant_look(group, int(classes.variant[leaf]))[2])
            texture = TEXTURES[int(classes.texture[leaf])][0]
            paint(canvas, mask, texture, base, trim, geometry["centre"], geometry["radius"], geometry["angle"])
            idmap[mask] = object_id
            visible[:] = after
            visible[object_id] = area[object_id] = pixels
            placed.append(Placed(leaf, object_id, pixels, geometry["keypoints"]))
            break
        else:
            dropped += 1
    return Scene(finish(canvas, rng, render.pixel_noise), idmap, placed, dropped)
