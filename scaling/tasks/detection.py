"""Object detection: Faster R-CNN on a ResNet backbone, COCO JSON in, COCO box AP out.

The default is the paper's "C4" design: conv1-conv4 (stem, layer1..layer3)
form the shared trunk of the region proposal network and the box classifier,
and conv5 (layer4) is the box head, run on 14x14 RoIAlign features of each
proposal. ``detection.fpn: true`` builds a feature pyramid on conv2..conv5
with torchvision's two-layer MLP box head instead.

Images are resized so that their long side is ``data.image_size``; boxes are
scaled with them, and predictions are scaled back to the original image
coordinates before pycocotools scores them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from datascale.errors import ConfigError
from scaling.models.backbones import Backbone
from scaling.tasks.augment import Augment, Sample
from scaling.tasks.coco_data import CocoSet, CocoTask
from scaling.tasks.coco_eval import coco_metrics
from scaling.tasks.common import ImageCache, image_stats, model_device, read_image, to_tensor
from scaling.tasks.config import FinetuneConfig

log = logging.getLogger(__name__)


class DetectionDataset(torch.utils.data.Dataset):
    """Items: (float image in [0, 1], {"boxes" xyxy, "labels" 1..C}, index), resized.

    Category ids map to contiguous labels 1..C in the order of the file's
    categories (0 is torchvision's background).
    """

    def __init__(self, coco: CocoSet, image_size: int, cache: bool, augment: Augment | None = None) -> None:
        self.coco = coco
        self.image_size = image_size
        self.augment = augment
        self.label_of = {cat_id: i + 1 for i, cat_id in enumerate(coco.category_ids)}
        self.category_of = {label: cat_id for cat_id, label in self.label_of.items()}
        self.skipped = coco.skipped
        self._cache = ImageCache(cache)

    def __len__(self) -> int:
        return len(self.coco.images)

    def key(self, index: int) -> str:
        return str(self.coco.images[index]["path"])

    def load(self, index: int) -> tuple[torch.Tensor, tuple[float, float]]:
        """(uint8 image resized to long side image_size, (x scale, y scale))."""
        def decode():
            img = read_image(self.coco.images[index]["path"])
            scale = self.image_size / max(img.size)
            size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
            return to_tensor(img.resize(size)), (size[0] / img.size[0], size[1] / img.size[1])
        return self._cache.get(index, decode)

    def __getitem__(self, index: int):
        image, (sx, sy) = self.load(index)
        anns = [a for a in self.coco.annotations[self.coco.images[index]["id"]] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes *= torch.tensor([sx, sy, sx, sy])
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        if self.augment is not None:
            sample = self.augment(Sample(image, boxes=boxes, labels=labels))
            image, boxes, labels = sample.image, sample.boxes, sample.labels
        return image.float().div_(255.0), {"boxes": boxes, "labels": labels}, index


class C4BoxHead(nn.Module):
    """conv5 (layer4) on RoIAlign features, then global average pooling: (N, C4, s, s) -> (N, C5)."""

    def __init__(self, layer4: nn.Module) -> None:
        super().__init__()
        self.layer4 = layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.layer4(x), 1), 1)


def _c4(backbone: Backbone, cfg: FinetuneConfig, num_classes: int, common: dict) -> FasterRCNN:
    det = cfg.detection
    trunk = nn.Sequential(OrderedDict((name, getattr(backbone, name)) for name in
                                      ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")))
    trunk.out_channels = backbone.stage_channels["conv4"]
    anchors = AnchorGenerator(sizes=(tuple(det.anchor_sizes),), aspect_ratios=(tuple(det.aspect_ratios),))
    return FasterRCNN(
        trunk, rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0"], det.roi_output_size, sampling_ratio=det.roi_sampling_ratio),
        box_head=C4BoxHead(backbone.layer4),
        box_predictor=FastRCNNPredictor(backbone.feature_dim, num_classes + 1), **common)


def _fpn(backbone: Backbone, cfg: FinetuneConfig, num_classes: int, common: dict) -> FasterRCNN:
    det = cfg.detection
    if len(det.anchor_sizes) != 5:
        raise ConfigError("detection.anchor_sizes: with fpn=true give 5 sizes, one per pyramid "
                          f"level (P2..P6), e.g. [16, 32, 64, 128, 256]; got {det.anchor_sizes}")
    body = BackboneWithFPN(
        backbone, return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=[backbone.stage_channels[f"conv{i}"] for i in range(2, 6)],
        out_channels=det.fpn_channels, extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(sizes=tuple((s,) for s in det.anchor_sizes),
                              aspect_ratios=(tuple(det.aspect_ratios),) * 5)
    size = det.roi_output_size
    hidden = 4 * det.fpn_channels
    return FasterRCNN(
        body, rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], size, sampling_ratio=det.roi_sampling_ratio),
        box_head=TwoMLPHead(det.fpn_channels * size * size, hidden),
        box_predictor=FastRCNNPredictor(hidden, num_classes + 1), **common)


class DetectionTask(CocoTask):
    name = "detection"
    primary_metric = "AP"
    annotations = "annotations/instances_{split}.json"
    kind = "detection"

    def load_train(self, cfg: FinetuneConfig) -> DetectionDataset:
        return DetectionDataset(self.read_train(cfg), cfg.data.image_size, cfg.data.cache_images,
                                Augment(cfg.train))

    def load_test(self, cfg: FinetuneConfig, test_set: str) -> DetectionDataset | None:
        coco = self.read_test(cfg, test_set)
        return DetectionDataset(coco, cfg.data.image_size, cfg.data.cache_images) if coco else None

    def build_model(self, backbone: Backbone, cfg: FinetuneConfig, train_set: DetectionDataset,
                    meta: dict) -> FasterRCNN:
        det = cfg.detection
        mean, std = image_stats(meta)
        common = dict(
            min_size=cfg.data.image_size, max_size=cfg.data.image_size, image_mean=mean, image_std=std,
            rpn_batch_size_per_image=det.rpn_batch_size_per_image,
            rpn_pre_nms_top_n_train=det.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=det.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=det.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=det.rpn_post_nms_top_n_test,
            box_batch_size_per_image=det.box_batch_size_per_image,
            box_score_thresh=det.box_score_thresh, box_detections_per_img=det.box_detections_per_img)
        builder = _fpn if det.fpn else _c4
        return builder(backbone, cfg, len(train_set.coco.categories), common)

    def collate(self, items: list):
        images, targets, indices = zip(*items)
        return list(images), list(targets), list(indices)

    def loss(self, model: FasterRCNN, batch) -> dict[str, torch.Tensor]:
        images, targets, _ = batch
        return model(images, targets)

    @torch.inference_mode()
    def predict(self, model: FasterRCNN, dataset: DetectionDataset, batch_size: int, cache: dict) -> None:
        """Fill ``cache[image key]`` with COCO-format detections (no image_id) in original pixels."""
        todo = [i for i in range(len(dataset)) if dataset.key(i) not in cache]
        model.eval()
        device = model_device(model)
        for start in range(0, len(todo), batch_size):
            items = [dataset[i] for i in todo[start:start + batch_size]]
            outputs = model([image.to(device) for image, _, _ in items])
            for (image, _, index), out in zip(items, outputs):
                out = {key: value.cpu() for key, value in out.items()}
                record = dataset.coco.images[index]  # width/height are the file's (checked on reading)
                sx, sy = image.shape[-1] / record["width"], image.shape[-2] / record["height"]
                boxes = out["boxes"] / torch.tensor([sx, sy, sx, sy])
                boxes[:, 2:] -= boxes[:, :2]
                cache[dataset.key(index)] = [
                    {"category_id": dataset.category_of[int(label)], "bbox": [round(float(v), 2) for v in box],
                     "score": round(float(score), 5)}
                    for box, label, score in zip(boxes, out["labels"], out["scores"])]

    def evaluate(self, model: FasterRCNN, dataset: DetectionDataset, cfg: FinetuneConfig,
                 cache: dict) -> dict[str, float]:
        self.predict(model, dataset, cfg.train.eval_batch_size, cache)
        results = [dict(det, image_id=img["id"]) for i, img in enumerate(dataset.coco.images)
                   for det in cache[dataset.key(i)]]
        return coco_metrics(dataset.coco.gt, results, "bbox")


TASK = DetectionTask()
