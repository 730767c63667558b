"""Semantic segmentation: DeepLab on a dilated ResNet, VOC-style masks in, mIoU out.

The model is the paper's DeepLab variant: output stride 8 (layer3 and layer4
dilated instead of strided), then four parallel 3x3 atrous convolutions on
conv5 (rates 6, 12, 18, 24; scale them down for tiny images via
``segmentation.atrous_rates``) whose class scores are summed and upsampled
bilinearly to the input size.

Data: ``ROOT/ImageSets/Segmentation/{split}.txt`` (one image id per line),
``ROOT/JPEGImages/ID.jpg``, ``ROOT/SegmentationClass/ID.png`` (palette or
grey PNG of class indices, 255 = ignore) and ``ROOT/labels.txt`` (line i names
class i). Masks are looked up in ``SegmentationClass`` beside the image folder.
Scoring happens at each image's original resolution.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from datascale.errors import ConfigError, DataError
from datascale.formats import voc
from scaling.models.backbones import Backbone
from scaling.tasks.augment import Augment, Sample
from scaling.tasks.common import (ImageCache, Normalize, Task, as_file, cleaned_path, image_size_of,
                                  labelled_subset, model_device, read_image, report_skips, split_paths,
                                  to_tensor)
from scaling.tasks.config import FinetuneConfig

log = logging.getLogger(__name__)

LISTS = voc.LIST_PATTERN
IMAGES = voc.IMAGES_DIR
IGNORE = voc.IGNORE



@dataclass
class VocSet:
    """Checked image ids of one split, with their image and mask paths."""

    source: Path
    ids: list[str]
    images: list[Path]
    masks: list[Path]
    class_names: list[str]
    skipped: collections.Counter = field(default_factory=collections.Counter)


def class_names(images_dir: Path, num_classes: int) -> list[str]:
    """Names from labels.txt beside the image folder, or ``class_i`` when only a count is configured."""
    labels = images_dir.parent / "labels.txt"
    names = voc.read_class_names(images_dir.parent)
    if num_classes and names and len(names) != num_classes:
        raise ConfigError(f"segmentation.num_classes is {num_classes} but {labels} names {len(names)} "
                          "classes; set it to 0 to use labels.txt")
    if not names and not num_classes:
        raise ConfigError(f"no {labels}: set segmentation.num_classes to the number of classes")
    return names or [f"class_{i}" for i in range(num_classes)]


def read_voc(list_path: Path, images_dir: Path, names: list[str]) -> VocSet:
    """Read an image list; skip (and count) ids whose image or mask is missing or whose mask
    size differs from the image. Only file headers are read. DataError when nothing is left."""
    ids = voc.read_image_list(list_path)
    kept = VocSet(list_path, [], [], [], names)
    seen: set[str] = set()
    for image_id in ids:
        if image_id in seen:
            kept.skipped["id listed twice"] += 1
            continue
        seen.add(image_id)
        image = voc.image_path(images_dir, image_id)
        mask = voc.mask_path(images_dir, image_id)
        if image is None:
            kept.skipped["image missing on disk"] += 1
        elif not mask.is_file():
            kept.skipped["mask missing on disk"] += 1
        elif image_size_of(image) != image_size_of(mask):
            kept.skipped["mask size differs from its image"] += 1
        else:
            kept.ids.append(image_id)
            kept.images.append(image)
            kept.masks.append(mask)
    if not kept.ids:
        raise DataError(f"none of the {len(ids)} ids in {list_path} has both an image in {images_dir} "
                        f"and a mask of the same size in {voc.mask_path(images_dir, 'ID').parent}")
    report_skips(str(list_path), kept.skipped, len(kept.ids))
    return kept


class SegmentationDataset(torch.utils.data.Dataset):
    """Items: (uint8 image S x S, int64 mask S x S, index), S = data.image_size (aspect not kept)."""

    def __init__(self, voc: VocSet, image_size: int, cache: bool, augment: Augment | None = None) -> None:
        self.voc = voc
        self.size = image_size
        self.augment = augment
        self.skipped = voc.skipped
        self._cache = ImageCache(cache)

    def __len__(self) -> int:
        return len(self.voc.ids)

    def key(self, index: int) -> str:
        return str(self.voc.images[index])

    def __getitem__(self, index: int):
        def decode():
            image = read_image(self.voc.images[index]).resize((self.size, self.size), Image.BILINEAR)
            mask = Image.fromarray(voc.read_mask(as_file(self.voc.masks[index]), len(self.voc.class_names)))
            mask = np.asarray(mask.resize((self.size, self.size), Image.NEAREST), dtype=np.int64)
            return to_tensor(image), torch.from_numpy(mask.copy())
        image, mask = self._cache.get(index, decode)
        if self.augment is not None:
            sample = self.augment(Sample(image, mask=mask))
            image, mask = sample.image, sample.mask
        return image, mask, index


class DeepLab(nn.Module):
    """Backbone (dilated) + parallel 3x3 atrous branches on conv5, scores summed, upsampled."""

    def __init__(self, backbone: Backbone, num_classes: int, rates: list[int], meta: dict) -> None:
        super().__init__()
        self.normalize = Normalize(meta)
        self.backbone = backbone
        self.branches = nn.ModuleList(
            nn.Conv2d(backbone.feature_dim, num_classes, 3, padding=rate, dilation=rate) for rate in rates)
        for branch in self.branches:
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (B, C, H, W) at input resolution for uint8 images (B, 3, H, W)."""
        features = self.backbone.forward_stages(self.normalize(images))["conv5"]
        scores = torch.stack([branch(features) for branch in self.branches]).sum(0)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


def confusion_matrix(target: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted; ignore pixels (255) left out."""
    valid = target != IGNORE
    index = target[valid].astype(np.int64) * num_classes + prediction[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_metrics(confusion: np.ndarray, names: list[str]) -> dict[str, float]:
    """mIoU, pixel accuracy and ``IoU/<class>`` from a confusion matrix.

    A class absent from both the ground truth and the predictions has no IoU;
    it is left out of the mean and of the per-class keys (VOC convention).
    """
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    defined = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=defined)
    metrics = {"mIoU": float(iou[defined].mean()) if defined.any() else 0.0,
               "pixel_accuracy": float(tp.sum() / max(confusion.sum(), 1))}
    metrics.update({f"IoU/{name}": float(iou[c]) for c, name in enumerate(names) if defined[c]})
    return metrics


class SegmentationTask(Task):
    name = "segmentation"
    primary_metric = "mIoU"

    def dilation(self, cfg: FinetuneConfig) -> tuple[bool, bool, bool]:
        return (False, True, True) if cfg.segmentation.output_stride == 8 else (False, False, True)

    def input_files(self, cfg: FinetuneConfig) -> dict[str, Path]:
        files = {"train_list": split_paths(cfg.data, "train", LISTS, IMAGES)[0],
                 "test_list": split_paths(cfg.data, "test", LISTS, IMAGES)[0]}
        cleaned = cleaned_path(cfg.data)
        return {**files, "cleaned_test": cleaned} if cleaned else files

    def _read(self, cfg: FinetuneConfig, split: str, list_path: Path | None = None) -> VocSet:
        default_list, images = split_paths(cfg.data, split, LISTS, IMAGES)
        names = class_names(images, cfg.segmentation.num_classes)
        return read_voc(list_path or default_list, images, names)

    def load_train(self, cfg: FinetuneConfig) -> SegmentationDataset:
        voc = self._read(cfg, "train")
        kept = labelled_subset(voc.ids, cfg.data)
        for name in ("ids", "images", "masks"):
            setattr(voc, name, [getattr(voc, name)[i] for i in kept][: cfg.data.max_train_images or None])
        return SegmentationDataset(voc, cfg.data.image_size, cfg.data.cache_images, Augment(cfg.train))

    def load_test(self, cfg: FinetuneConfig, test_set: str) -> SegmentationDataset | None:
        path = cleaned_path(cfg.data) if test_set == "cleaned" else None
        if test_set == "cleaned" and path is None:
            return None
        return SegmentationDataset(self._read(cfg, "test", path), cfg.data.image_size, cfg.data.cache_images)

    def build_model(self, backbone: Backbone, cfg: FinetuneConfig, train_set: SegmentationDataset,
                    meta: dict) -> DeepLab:
        return DeepLab(backbone, len(train_set.voc.class_names), cfg.segmentation.atrous_rates, meta)

    def collate(self, items: list):
        images, masks, indices = zip(*items)
        return torch.stack(images), torch.stack(masks), list(indices)

    def loss(self, model: DeepLab, batch) -> dict[str, torch.Tensor]:
        images, masks, _ = batch
        # A sum over labelled pixels: a batch that is all "ignore" gives 0, not 0/0 = NaN.
        total = F.cross_entropy(model(images), masks, ignore_index=IGNORE, reduction="sum")
        return {"loss_ce": total / (masks != IGNORE).sum().clamp(min=1)}

    @torch.inference_mode()
    def evaluate(self, model: DeepLab, dataset: SegmentationDataset, cfg: FinetuneConfig,
                 cache: dict) -> dict[str, float]:
        """Per-image confusion matrices at original resolution (cached: the cleaned set sums a subset)."""
        model.eval()
        device = model_device(model)
        num_classes = len(dataset.voc.class_names)
        todo = [i for i in range(len(dataset)) if dataset.key(i) not in cache]
        for start in range(0, len(todo), cfg.train.eval_batch_size):
            chunk = todo[start:start + cfg.train.eval_batch_size]
            scores = model(torch.stack([dataset[i][0] for i in chunk]).to(device)).float().cpu()
            for index, score in zip(chunk, scores):
                target = voc.read_mask(dataset.voc.masks[index], num_classes)
                full = F.interpolate(score[None], size=target.shape, mode="bilinear", align_corners=False)
                prediction = full[0].argmax(0).numpy()
                cache[dataset.key(index)] = confusion_matrix(target, prediction, num_classes)
        total = sum(cache[dataset.key(i)] for i in range(len(dataset)))
        return iou_metrics(total, dataset.voc.class_names)


TASK = SegmentationTask()
