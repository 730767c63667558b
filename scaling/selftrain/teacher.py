"""The teacher: a fine-tuning run folder's model, and what it predicts on unlabelled images.

A run folder written by ``datascale finetune`` (or a ``selftrain`` student)
holds ``config.yaml`` (the resolved config), ``model.pt`` (the task model's
state dict, read with ``torch.load(weights_only=True)``) and ``model.json``.
The model is rebuilt from the config on a fresh backbone of the named
architecture (no weights downloaded), then its state is loaded.

A labeller maps a batch of images to raw predictions in original pixels,
with scores; :mod:`scaling.selftrain.pseudo` applies the thresholds:

- detection: ``[{"bbox": [x, y, w, h], "category_id", "score"}, ...]``
- segmentation: ``{"labels": (H, W) uint8, "confidence": (H, W) float}``
- pose: ``[{"bbox", "category_id", "keypoints": [[x, y, score], ...]}, ...]``,
  one person per image whose box is the whole image (a top-down model needs
  person boxes, and unlabelled images come without them).
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from datascale.config import load_config
from datascale.errors import DataError
from datascale.lineage import read_config_record
from scaling.finetune.loop import MODEL_FILE, MODEL_META
from scaling.models.backbones import build_backbone
from scaling.tasks import get_task
from scaling.tasks.coco_data import CocoSet
from scaling.tasks.common import EncodedImage, read_image, to_tensor
from scaling.tasks.config import FinetuneConfig
from scaling.tasks.detection import DetectionDataset
from scaling.tasks.pose import PoseDataset, decode_heatmaps

log = logging.getLogger(__name__)

TEACHER_STAGES = ("finetune", "selftrain")


@dataclass
class Teacher:
    """A trained task model with the config and training set it was built from."""

    run: Path
    cfg: FinetuneConfig
    task: Any
    model: torch.nn.Module
    train_set: Any

    @property
    def weights(self) -> Path:
        return self.run / MODEL_FILE


def load_teacher(run: str | Path) -> Teacher:
    """Rebuild the model of run folder ``run`` in eval mode. DataError says what is missing."""
    run = Path(run)
    record = read_config_record(run)
    if record is None or record.get("stage") not in TEACHER_STAGES:
        raise DataError(f"{run} is not a fine-tuning run folder (no config.yaml of `datascale finetune`)")
    if not (run / MODEL_FILE).is_file():
        raise DataError(f"{run} has no {MODEL_FILE}: it was fine-tuned before runs saved their model, or "
                        "has not finished; fine-tune it again to use it as a teacher")
    cfg = load_config(FinetuneConfig, record["config"])
    meta = json.loads((run / MODEL_META).read_text(encoding="utf-8"))
    task = get_task(cfg.task)
    train_set = task.load_train(cfg)  # the model's classes or keypoints follow its training file
    backbone = build_backbone(meta["arch"], replace_stride_with_dilation=task.dilation(cfg))
    model = task.build_model(backbone, cfg, train_set, meta)
    model.load_state_dict(torch.load(run / MODEL_FILE, map_location="cpu", weights_only=True))
    model.eval()
    return Teacher(run, cfg, task, model, train_set)


def _coco(images: list[tuple[str, EncodedImage, int, int]], categories: list[dict],
          people: bool = False) -> CocoSet:
    """An in-memory CocoSet of unlabelled images (pose: one whole-image person box each)."""
    records = [{"id": i, "file_name": key, "path": data, "width": w, "height": h}
               for i, (key, data, w, h) in enumerate(images)]
    annotations: dict[int, list[dict]] = {r["id"]: [] for r in records}
    if people:
        k = len(next(c for c in categories if isinstance(c.get("keypoints"), list))["keypoints"])
        for r in records:
            annotations[r["id"]] = [{"bbox": [0.0, 0.0, float(r["width"]), float(r["height"])], "iscrowd": 0,
                                     "num_keypoints": k, "keypoints": [0.0] * (3 * k),
                                     "category_id": categories[0]["id"]}]
    return CocoSet(Path("unlabelled"), records, annotations, categories, {}, collections.Counter())


@torch.inference_mode()
def label_detection(teacher: Teacher, images: list) -> list:
    dataset = DetectionDataset(_coco(images, teacher.train_set.coco.categories), teacher.cfg.data.image_size,
                               cache=False)
    cache: dict = {}
    teacher.task.predict(teacher.model, dataset, teacher.cfg.train.eval_batch_size, cache)
    return [cache[dataset.key(i)] for i in range(len(dataset))]


@torch.inference_mode()
def label_segmentation(teacher: Teacher, images: list) -> list:
    size = teacher.cfg.data.image_size
    pictures = [read_image(data) for _, data, _, _ in images]
    batch = torch.stack([to_tensor(p.resize((size, size), Image.BILINEAR)) for p in pictures])
    out = []
    for picture, scores in zip(pictures, teacher.model(batch)):
        full = F.interpolate(scores[None], size=(picture.height, picture.width), mode="bilinear",
                             align_corners=False)[0].softmax(0)
        confidence, labels = full.max(0)
        out.append({"labels": labels.numpy().astype(np.uint8), "confidence": confidence.numpy()})
    return out


@torch.inference_mode()
def label_pose(teacher: Teacher, images: list) -> list:
    categories = teacher.train_set.coco.categories
    dataset = PoseDataset(_coco(images, categories, people=True), teacher.cfg.pose, cache=False)
    crops = torch.stack([dataset[i][0] for i in range(len(dataset))])
    heatmaps = teacher.model(crops)
    points, _ = decode_heatmaps(heatmaps, crops.shape[-1] / heatmaps.shape[-1])
    peaks = heatmaps.flatten(2).max(-1).values
    out = []
    for index, (xy, peak) in enumerate(zip(points, peaks)):
        x0, y0, side = dataset.crop_box(index)
        xy = xy * (side / dataset.size) + torch.tensor([x0, y0])
        keypoints = [[round(float(x), 2), round(float(y), 2), float(p)] for (x, y), p in zip(xy.tolist(), peak)]
        ann = dataset.people[index][1]
        out.append([{"bbox": ann["bbox"], "category_id": ann["category_id"], "keypoints": keypoints}])
    return out


#: task name -> labeller(teacher, [(key, EncodedImage, width, height), ...]) -> raw predictions per image.
LABELLERS = {"detection": label_detection, "segmentation": label_segmentation, "pose": label_pose}


def teacher_labeller(teacher: Teacher):
    """The labeller of the teacher's task, bound to the teacher."""
    label = LABELLERS[teacher.task.name]
    return lambda images: label(teacher, images)
