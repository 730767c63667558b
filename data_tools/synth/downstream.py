"""Downstream dataset formats: COCO detection and keypoint JSON, VOC segmentation.

These functions turn rendered scenes into annotation records and write the
files laid out in docs/formats.md ("The synthetic world"). Boxes, areas and
RLE masks all come from the same visible-pixel mask through pycocotools, so
``maskUtils.toBbox(segmentation) == bbox`` and ``maskUtils.area == area``
hold exactly.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from datascale.atomic import write_text
from data_tools.synth.figures import KEYPOINTS, SIGMAS, SKELETON, keypoint_visibility
from data_tools.synth.scenes import Placed, Scene
from data_tools.synth.vocab import WorldClasses

SPLITS = ("train", "val", "test")
PLANTED_COLUMNS = ["dataset", "split", "test_image", "test_id", "pretrain_key", "transform"]


def mask_annotation(mask: np.ndarray) -> dict:
    """COCO ``segmentation`` (compressed RLE, counts as text), ``area`` and ``bbox`` of a mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = int(mask_utils.area(rle))
    return {"segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": area, "bbox": bbox}


def detection_annotations(scene: Scene, classes: WorldClasses) -> list[dict]:
    """One COCO instance per visible object: category = its family (1-based), plus its fine ``class_id``."""
    out = []
    for obj in scene.objects:
        leaf = obj.leaf
        out.append({"category_id": int(classes.family[leaf]) + 1, "iscrowd": 0,
                    "class_id": int(classes.leaf_ids[leaf]), **mask_annotation(scene.visible_mask(obj))})
    return out


def pose_annotation(scene: Scene, obj: Placed, classes: WorldClasses) -> dict:
    """A COCO keypoint instance for a figure; keypoints outside the image are (0, 0, 0)."""
    flags = keypoint_visibility(obj.keypoints, scene.idmap, obj.object_id)
    flat: list[float] = []
    for (x, y), v in zip(obj.keypoints.tolist(), flags.tolist()):
        flat.extend([round(x, 2), round(y, 2), int(v)] if v else [0, 0, 0])
    return {"category_id": 1, "iscrowd": 0, "class_id": int(classes.leaf_ids[obj.leaf]),
            "keypoints": flat, "num_keypoints": int((flags > 0).sum()),
            **mask_annotation(scene.visible_mask(obj))}


def detection_categories(classes: WorldClasses) -> list[dict]:
    """COCO categories: the families (depth-1 classes), ids 1..F, with their group."""
    return [{"id": f + 1, "name": name, "supercategory": classes.family_groups[f]}
            for f, name in enumerate(classes.family_names)]


def pose_categories() -> list[dict]:
    """The single ``figure`` category with its 14 keypoints, skeleton and OKS sigmas."""
    return [{"id": 1, "name": "figure", "supercategory": "figure", "keypoints": KEYPOINTS,
             "skeleton": SKELETON, "sigmas": SIGMAS}]


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[dict],
               description: str) -> None:
    """Write a COCO JSON file atomically, numbering annotations 1..N in the given order."""
    numbered = [{"id": i + 1, "image_id": ann.pop("image_id"), **ann} for i, ann in enumerate(annotations)]
    data = {"info": {"description": description, "version": "1.0"}, "licenses": [],
            "images": images, "annotations": numbered, "categories": categories}
    write_text(path, json.dumps(data, separators=(",", ":")) + "\n")


def voc_palette() -> list[int]:
    """The 256-colour PASCAL VOC palette (class i's colour from the bits of i), flat RGB."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend([r, g, b])
    return palette


_PALETTE = voc_palette()


def segmentation_mask(scene: Scene, classes: WorldClasses, void_border: int) -> np.ndarray:
    """uint8 (H, W) class map: 0 background, family + 1 per object, 255 on a ``void_border`` band."""
    lookup = np.zeros(len(scene.objects) + 1, dtype=np.uint8)
    for obj in scene.objects:
        lookup[obj.object_id] = int(classes.family[obj.leaf]) + 1
    labels = lookup[scene.idmap]
    if void_border > 0:
        edge = np.zeros(labels.shape, dtype=bool)
        edge[1:, :] |= labels[1:, :] != labels[:-1, :]
        edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
        for _ in range(void_border - 1):
            grown = edge.copy()
            grown[1:, :] |= edge[:-1, :]
            grown[:-1, :] |= edge[1:, :]
            grown[:, 1:] |= edge[:, :-1]
            grown[:, :-1] |= edge[:, 1:]
            edge = grown
        labels = np.where(edge, np.uint8(255), labels)
    return labels


def palette_png(labels: np.ndarray) -> bytes:
    """PNG bytes of a palette ('P' mode) image holding class indices, VOC colours."""
    image = Image.fromarray(labels)  # mode "L"; putpalette turns it into "P" keeping the indices
    image.putpalette(_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def segmentation_labels(classes: WorldClasses) -> list[str]:
    """Class names for ``labels.txt``: line 0 background, line i the (i-1)-th family."""
    return ["background", *classes.family_names]


def write_planted(path: Path, rows: list[dict]) -> None:
    """Write duplicates/planted.csv (columns in docs/formats.md) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PLANTED_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
