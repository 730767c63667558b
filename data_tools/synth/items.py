"""One image of each kind: the world plan and a renderer per split kind (a registry).

``render_item(plan, kind, split, index)`` is a pure function of the world
config and (kind, split, index): each item draws from its own random stream,
so the bytes of every file are the same whatever the number of workers.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from data_tools.synth.config import WorldConfig
from data_tools.synth.downstream import (detection_annotations, palette_png, pose_annotation,
                                         segmentation_mask)
from data_tools.synth.duplicates import PlantedCopy, make_copy, objects_in_window, plan_duplicates
from data_tools.synth.noise import NoisePlan, corrupt_labels
from data_tools.synth.scenes import STYLES, Scene, compose
from data_tools.synth.vocab import (WorldClasses, build_classes, object_count_pmf, poisson_rate_for_mean,
                                    sample_leaves, stream_rng)

log = logging.getLogger(__name__)


@dataclass
class WorldPlan:
    """Everything a worker needs to render any item (small: pickled once per worker)."""

    config: WorldConfig
    classes: WorldClasses
    noise: NoisePlan
    extra_object_rate: float
    eval_weights: np.ndarray
    uniform_weights: np.ndarray
    shape_leaves: np.ndarray
    figure_leaves: np.ndarray
    planted: dict[int, PlantedCopy]


def make_plan(config: WorldConfig) -> WorldPlan:
    """Build the classes, noise model and planted-copy positions for ``config`` (milliseconds)."""
    classes = build_classes(config.classes, config.seed)
    planted = {copy.pool_index: copy for copy in plan_duplicates(config)}
    labels = config.labels
    extra_objects = poisson_rate_for_mean(labels.cardinality, labels.max_objects)
    noise = NoisePlan.from_config(labels, object_count_pmf(extra_objects, labels.max_objects))
    if not noise.feasible:
        log.warning("labels.missing_rate=%s with noise_rate=%s: giving every image a label needs more wrong "
                    "labels than the noise rate allows, so the measured noise rate will be higher (see "
                    "world.json); set labels.allow_unlabelled=true to keep both rates",
                    labels.missing_rate, labels.noise_rate)
    return WorldPlan(
        config=config, classes=classes, noise=noise, extra_object_rate=extra_objects,
        eval_weights=classes.tempered(config.eval.class_temperature),
        uniform_weights=np.full(classes.num_leaves, 1.0 / classes.num_leaves),
        shape_leaves=classes.leaves_of(False), figure_leaves=classes.leaves_of(True), planted=planted)


@dataclass
class ItemResult:
    """Files to write (paths relative to the world folder), the item's record, and counters."""

    files: list[tuple[str, bytes]]
    record: dict
    stats: dict[str, int] = field(default_factory=dict)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a uint8 (H, W, 3) image (baseline, no EXIF: deterministic bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def pool_key(kind: str, index: int) -> tuple[str, str]:
    """(key, image path relative to the pool folder): ``pt0001234``, ``images/0001/pt0001234.jpg``."""
    key = f"{'pt' if kind == 'pretrain' else 'ev'}{index:07d}"
    return key, f"images/{index // 1000:04d}/{key}.jpg"


def coco_file_name(index: int) -> str:
    """File name under ``images/SPLIT/`` of the 0-based ``index``-th image (its COCO id is index + 1)."""
    return f"{index + 1:06d}.jpg"


def voc_id(split: str, index: int) -> str:
    """VOC image id of the 0-based ``index``-th segmentation image of ``split``: ``seg_val_000001``."""
    return f"seg_{split}_{index + 1:06d}"


def _class_ids(plan: WorldPlan, leaves: list[int]) -> list[int]:
    return sorted({int(plan.classes.leaf_ids[p]) for p in leaves})


def _pool_scene(plan: WorldPlan, kind: str, index: int, weights: np.ndarray) -> tuple[Scene, np.random.Generator]:
    rng = stream_rng(plan.config.seed, kind, index)
    count = min(1 + int(rng.poisson(plan.extra_object_rate)), plan.config.labels.max_objects)
    leaves = sample_leaves(rng, count, weights)
    size = getattr(plan.config, kind).image_size
    return compose(plan.classes, leaves, size, STYLES["pool"], plan.config.render, rng), rng


def downstream_scene(plan: WorldPlan, dataset: str, split: str, index: int) -> Scene:
    """The scene of one downstream image (also re-rendered for its planted copy)."""
    rng = stream_rng(plan.config.seed, f"{dataset}/{split}", index)
    cfg = getattr(plan.config, dataset)
    if dataset == "pose":
        figures = sample_leaves(rng, int(rng.integers(1, cfg.max_objects + 1)),
                                np.full(len(plan.figure_leaves), 1.0 / len(plan.figure_leaves)),
                                plan.figure_leaves)
        occluders: list[int] = []
        if len(plan.shape_leaves) and cfg.occluders:
            occluders = sample_leaves(rng, int(rng.integers(0, cfg.occluders + 1)),
                                      np.full(len(plan.shape_leaves), 1.0 / len(plan.shape_leaves)),
                                      plan.shape_leaves)
        leaves, style = figures + occluders, STYLES["pose"]
    else:
        leaves = sample_leaves(rng, int(rng.integers(1, cfg.max_objects + 1)), plan.uniform_weights)
        style = STYLES["downstream"]
    return compose(plan.classes, leaves, cfg.image_size, style, plan.config.render, rng)


def _planted_copy(plan: WorldPlan, copy: PlantedCopy) -> tuple[bytes, list[int]]:
    scene = downstream_scene(plan, copy.dataset, "test", copy.test_index)
    masks = [scene.visible_mask(obj) for obj in scene.objects]
    jpeg, window = make_copy(scene.image, masks, copy.transform, plan.config.seed, copy.pool_index,
                             plan.config.pretrain.image_size, plan.config.render.jpeg_quality)
    return jpeg, [scene.objects[i].leaf for i in objects_in_window(masks, window)]


def render_pretrain(plan: WorldPlan, split: str, index: int) -> ItemResult:
    """A pretraining image with noisy and true labels; planted copies sit at their pool positions."""
    key, rel = pool_key("pretrain", index)
    copy = plan.planted.get(index)
    if copy is not None:
        jpeg, true_leaves = _planted_copy(plan, copy)
        rng, dropped = stream_rng(plan.config.seed, "pretrain", index), 0
    else:
        scene, rng = _pool_scene(plan, "pretrain", index, plan.classes.weights)
        jpeg = encode_jpeg(scene.image, plan.config.render.jpeg_quality)
        true_leaves, dropped = [obj.leaf for obj in scene.objects], scene.dropped
    noisy, counts = corrupt_labels(true_leaves, rng, plan.noise, plan.classes)
    record = {"key": key, "image": rel, "labels": _class_ids(plan, noisy),
              "true_labels": _class_ids(plan, true_leaves)}
    return ItemResult([(f"pretrain/{rel}", jpeg)], record,
                      {**counts, "dropped_objects": dropped, "planted": int(copy is not None)})


def render_eval(plan: WorldPlan, split: str, index: int) -> ItemResult:
    """A densely and correctly labelled eval image (labels == true_labels), class-balanced-ish."""
    key, rel = pool_key("eval", index)
    scene, _ = _pool_scene(plan, "eval", index, plan.eval_weights)
    labels = _class_ids(plan, [obj.leaf for obj in scene.objects])
    record = {"key": key, "image": rel, "labels": labels, "true_labels": list(labels)}
    jpeg = encode_jpeg(scene.image, plan.config.render.jpeg_quality)
    return ItemResult([(f"eval/{rel}", jpeg)], record, {"dropped_objects": scene.dropped})


def _coco_image(index: int, size: int) -> dict:
    return {"id": index + 1, "file_name": coco_file_name(index), "width": size, "height": size}


def render_detection(plan: WorldPlan, split: str, index: int) -> ItemResult:
    """A detection image and its COCO instances (category = family)."""
    scene = downstream_scene(plan, "detection", split, index)
    annotations = [{"image_id": index + 1, **ann} for ann in detection_annotations(scene, plan.classes)]
    jpeg = encode_jpeg(scene.image, plan.config.render.jpeg_quality)
    record = {"image": _coco_image(index, plan.config.detection.image_size), "annotations": annotations}
    return ItemResult([(f"detection/images/{split}/{coco_file_name(index)}", jpeg)], record,
                      {"objects": len(annotations), "dropped_objects": scene.dropped})


def render_segmentation(plan: WorldPlan, split: str, index: int) -> ItemResult:
    """A segmentation image and its palette PNG class mask (VOC layout)."""
    scene = downstream_scene(plan, "segmentation", split, index)
    name = voc_id(split, index)
    mask = segmentation_mask(scene, plan.classes, plan.config.segmentation.void_border)
    files = [(f"segmentation/JPEGImages/{name}.jpg", encode_jpeg(scene.image, plan.config.render.jpeg_quality)),
             (f"segmentation/SegmentationClass/{name}.png", palette_png(mask))]
    return ItemResult(files, {"id": name}, {"objects": len(scene.objects), "dropped_objects": scene.dropped,
                                            "void_pixels": int((mask == 255).sum())})


def render_pose(plan: WorldPlan, split: str, index: int) -> ItemResult:
    """A pose image: COCO keypoint instances for its figures (occluding shapes are not annotated)."""
    scene = downstream_scene(plan, "pose", split, index)
    figures = [obj for obj in scene.objects if obj.keypoints is not None]
    annotations = [{"image_id": index + 1, **pose_annotation(scene, obj, plan.classes)} for obj in figures]
    flags = np.array([ann["keypoints"][2::3] for ann in annotations], dtype=np.int64).reshape(-1)
    stats = {"figures": len(figures), "dropped_objects": scene.dropped,
             "keypoints_outside": int((flags == 0).sum()), "keypoints_hidden": int((flags == 1).sum()),
             "keypoints_visible": int((flags == 2).sum())}
    jpeg = encode_jpeg(scene.image, plan.config.render.jpeg_quality)
    record = {"image": _coco_image(index, plan.config.pose.image_size), "annotations": annotations}
    return ItemResult([(f"pose/images/{split}/{coco_file_name(index)}", jpeg)], record, stats)


ITEM_RENDERERS: dict[str, Callable[[WorldPlan, str, int], ItemResult]] = {
    "pretrain": render_pretrain, "eval": render_eval, "detection": render_detection,
    "segmentation": render_segmentation, "pose": render_pose,
}


def render_item(plan: WorldPlan, kind: str, split: str, index: int) -> ItemResult:
    """Render item ``index`` of ``kind``/``split`` (``split`` is "all" for the pools)."""
    return ITEM_RENDERERS[kind](plan, split, index)
