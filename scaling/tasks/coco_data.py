"""Check COCO JSON (detection boxes, person keypoints) for training and evaluation.

The file is read by :func:`datascale.formats.coco.load_coco`, the reader the dedup audit uses too.

What is wrong with a single sample is skipped and counted (image missing on
disk, zero-area box, box wholly outside its image); boxes partly outside are
clipped and counted. What makes the whole file suspect is an error: invalid
JSON, an annotation whose category id is not among the categories, keypoint
lists whose length does not match the category's keypoint names.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datascale.errors import DataError
from datascale.formats import coco
from scaling.tasks.common import Task, cleaned_path, image_size_of, labelled_subset, report_skips, split_paths
from scaling.tasks.config import FinetuneConfig

log = logging.getLogger(__name__)

#: COCO's per-keypoint OKS sigmas for its 17 person keypoints (pycocotools' values).
COCO_PERSON_SIGMAS = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
                      0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089]
COCO_PERSON_KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                         "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                         "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]


@dataclass
class CocoSet:
    """A checked COCO file: kept images (with ``path``), their usable annotations, and the
    ground truth as a COCO dict for pycocotools (kept images and annotations only)."""

    source: Path
    images: list[dict]
    annotations: dict[int, list[dict]]
    categories: list[dict]
    gt: dict
    skipped: collections.Counter = field(default_factory=collections.Counter)

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]


def _keypoint_count(path: Path, categories: list[dict]) -> int:
    """K, the number of keypoints shared by every category that defines keypoints."""
    counts = {len(c["keypoints"]) for c in categories if isinstance(c.get("keypoints"), list)}
    if not counts or 0 in counts:
        raise DataError(f"{path}: no category lists its 'keypoints' names; this is not a COCO "
                        "keypoints file")
    if len(counts) > 1:
        raise DataError(f"{path}: categories define different numbers of keypoints {sorted(counts)}; "
                        "one model predicts one keypoint set")
    return counts.pop()


def _check_images(path: Path, images_dir: Path, records: list, skipped: collections.Counter) -> list[dict]:
    kept = []
    for record in records:  # load_coco checked id and file_name
        image_path = coco.image_path(images_dir, record)
        if not image_path.is_file():
            skipped["image missing on disk"] += 1
            continue
        # Boxes are checked against, and predictions mapped back to, the real pixel size.
        size = image_size_of(image_path)
        if record.get("width") and record.get("height") and (record["width"], record["height"]) != size:
            skipped["image size differs from its JSON record"] += 1
            continue
        kept.append(dict(record, path=image_path, width=size[0], height=size[1]))
    return kept


def _clip_box(ann: dict, image: dict, path: Path, skipped: collections.Counter) -> list[float] | None:
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise DataError(f"{path}: annotation {ann.get('id')} has no valid 'bbox' [x, y, w, h]: {bbox!r:.60}")
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(image["width"])), min(y + h, float(image["height"]))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        skipped["zero-area or out-of-image box"] += 1
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        skipped["box clipped to its image (kept)"] += 1
    return [x0, y0, x1 - x0, y1 - y0]


def read_coco(path: Path, images_dir: Path, kind: Literal["detection", "keypoints"] = "detection") -> CocoSet:
    """Read COCO JSON ``path`` with images under ``images_dir``, checking every record.

    Memory and time: the JSON is held in memory; of each image file only the
    header is read (its size, checked against the JSON's width/height).
    Raises DataError for structural problems (see module docstring) and when
    no image is left; logs a warning with the counts of skipped items.
    """
    data = coco.load_coco(path)
    categories = data["categories"]
    cat_ids = {c.get("id") for c in categories}
    keypoints = _keypoint_count(path, categories) if kind == "keypoints" else 0
    skipped: collections.Counter = collections.Counter()
    images = _check_images(path, images_dir, data["images"], skipped)
    if not images:
        reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
        raise DataError(f"none of the {len(data['images'])} images listed in {path} can be used "
                        f"({reasons or 'the list is empty'}); check the image folder {images_dir} "
                        "(data.*_images / data.root)")
    by_id = {img["id"]: img for img in images}
    listed = {img.get("id") for img in data["images"]}
    unknown = [a.get("id") for a in data["annotations"] if a.get("category_id") not in cat_ids]
    if unknown:
        raise DataError(f"{path}: {len(unknown)} annotations have a category_id that is not among "
                        f"the categories {sorted(cat_ids)} (annotation ids {unknown[:5]}); "
                        "fix the categories list or the annotations")
    annotations: dict[int, list[dict]] = {img_id: [] for img_id in by_id}
    gt_anns = []
    for ann in data["annotations"]:
        image = by_id.get(ann.get("image_id"))
        if image is None:
            skipped["annotation of a skipped image" if ann.get("image_id") in listed
                    else "annotation of an unlisted image"] += 1
            continue
        if kind == "keypoints":
            values = ann.get("keypoints")
            if not isinstance(values, list) or len(values) != 3 * keypoints:
                raise DataError(f"{path}: annotation {ann.get('id')} has {len(values or [])} keypoint "
                                f"values; its category has {keypoints} keypoints, so 3 x {keypoints} = "
                                f"{3 * keypoints} values [x, y, visibility, ...] are needed")
        box = _clip_box(ann, image, path, skipped)
        if box is None:
            continue
        ann = dict(ann, bbox=box, iscrowd=int(ann.get("iscrowd", 0)),
                   area=float(ann.get("area") or box[2] * box[3]))
        if kind == "keypoints" and "num_keypoints" not in ann:
            ann["num_keypoints"] = sum(1 for v in ann["keypoints"][2::3] if v > 0)
        gt_anns.append(ann)
        annotations[image["id"]].append(ann)
    report_skips(str(path), skipped, len(images))
    gt = {"images": [{k: v for k, v in img.items() if k != "path"} for img in images],
          "annotations": gt_anns, "categories": categories}
    return CocoSet(path, images, annotations, categories, gt, skipped)


def read_cleaned_coco(full: CocoSet, subset_path: Path, images_dir: Path, kind: str) -> CocoSet:
    """Read a cleaned test set (a COCO file listing a subset of the images) with the same checks."""
    cleaned = read_coco(subset_path, images_dir, kind)  # type: ignore[arg-type]
    if [c["id"] for c in cleaned.categories] != full.category_ids:
        raise DataError(f"{subset_path} has other categories than the original test set {full.source}; "
                        "a cleaned test set must keep the original's categories")
    return cleaned


def keypoint_sigmas(categories: list[dict], default: float) -> list[float]:
    """Per-keypoint OKS sigmas: the category's ``sigmas`` field; COCO's values for COCO's 17
    person keypoints; otherwise ``default`` for every keypoint (documented in docs/formats.md)."""
    category = next(c for c in categories if isinstance(c.get("keypoints"), list))
    names = category["keypoints"]
    sigmas = category.get("sigmas")
    if sigmas is not None:
        if len(sigmas) != len(names) or not all(isinstance(s, (int, float)) and s > 0 for s in sigmas):
            raise DataError(f"category {category.get('name')!r}: 'sigmas' needs {len(names)} positive "
                            f"numbers, one per keypoint, got {sigmas!r:.80}")
        return [float(s) for s in sigmas]
    if names == COCO_PERSON_KEYPOINTS:
        return list(COCO_PERSON_SIGMAS)
    log.info("category %r gives no keypoint 'sigmas'; using %.3f for each of its %d keypoints",
             category.get("name"), default, len(names))
    return [default] * len(names)


class CocoTask(Task):
    """The data side shared by the COCO tasks: paths in the world's layout, train and test readers."""

    annotations: str  # pattern under data.root, e.g. "annotations/instances_{split}.json"
    images = "images/{split}"
    kind: Literal["detection", "keypoints"]

    def paths(self, cfg: FinetuneConfig, split: str) -> tuple[Path, Path]:
        """(annotation file, image folder) of "train" or "test"."""
        return split_paths(cfg.data, split, self.annotations, self.images)

    def input_files(self, cfg: FinetuneConfig) -> dict[str, Path]:
        files = {"train_annotations": self.paths(cfg, "train")[0],
                 "test_annotations": self.paths(cfg, "test")[0]}
        cleaned = cleaned_path(cfg.data)
        return {**files, "cleaned_test": cleaned} if cleaned else files

    def train_images(self, train_set) -> int:
        return len(train_set.coco.images)

    def check_test(self, train_set, test_set) -> None:
        """The model's labels follow the training file's categories, in order; a test file whose
        categories differ (ids, order or names) would be scored against the wrong classes."""
        train, test = train_set.coco, test_set.coco
        train_pairs = [(c.get("id"), c.get("name")) for c in train.categories]
        test_pairs = [(c.get("id"), c.get("name")) for c in test.categories]
        if train_pairs != test_pairs:
            raise DataError(f"the test file {test.source} lists other categories than the training file "
                            f"{train.source} (train {train_pairs[:4]}..., test {test_pairs[:4]}...); "
                            "give both files the same categories list, in the same order")

    def read_train(self, cfg: FinetuneConfig) -> CocoSet:
        """The checked training file: its ``data.labelled_fraction`` (by file name, see
        :func:`labelled_subset`), cut to ``data.max_train_images`` when that is set."""
        coco = read_coco(*self.paths(cfg, "train"), self.kind)
        kept = labelled_subset([str(img["file_name"]) for img in coco.images], cfg.data)
        coco.images = [coco.images[i] for i in kept]
        if cfg.data.max_train_images:
            coco.images = coco.images[: cfg.data.max_train_images]
        return coco

    def read_test(self, cfg: FinetuneConfig, test_set: str) -> CocoSet | None:
        """The checked original or cleaned test file (None: no cleaned set configured)."""
        ann, images = self.paths(cfg, "test")
        original = read_coco(ann, images, self.kind)
        if test_set != "cleaned":
            return original
        path = cleaned_path(cfg.data)
        return read_cleaned_coco(original, path, images, self.kind) if path else None
