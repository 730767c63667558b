"""Keypoints: top-down heatmaps (SimpleBaseline) on a ResNet, COCO keypoints in, OKS AP out.

Each annotated person box is expanded by ``pose.box_expand``, made square and
cropped to ``pose.input_size`` pixels; the backbone's conv5 output goes
through ``pose.deconv_layers`` stride-2 deconvolutions to one heatmap per
keypoint, trained against Gaussians (mean squared error on labelled
keypoints). At test time the same crops come from the ground-truth boxes, so
the keypoint AP measures keypoint localisation, not person detection; it is
computed by pycocotools with per-keypoint OKS sigmas from the category's
``sigmas`` field (or COCO's for COCO's 17 person keypoints, or
``pose.default_oks_sigma``). Training crops are augmented at ``train.augment``'s
level (:mod:`scaling.tasks.augment`); a flip swaps the keypoints whose names
pair "left" with "right" (the built-in pose configs keep ``train.hflip: false``).
"""

from __future__ import annotations

import logging

import torch
from PIL import Image
from torch import nn

from scaling.models.backbones import Backbone
from scaling.tasks.augment import Augment, Sample, flip_pairs
from scaling.tasks.coco_data import CocoSet, CocoTask, keypoint_sigmas
from scaling.tasks.coco_eval import coco_metrics
from scaling.tasks.common import ImageCache, Normalize, model_device, read_image, to_tensor
from scaling.tasks.config import FinetuneConfig, PoseConfig

log = logging.getLogger(__name__)


class PoseDataset(torch.utils.data.Dataset):
    """One item per person with labelled keypoints: (uint8 crop, (K, 3) keypoints in crop
    pixels with visibility, index). Crowd boxes and people without keypoints are left out."""

    def __init__(self, coco: CocoSet, pose: PoseConfig, cache: bool, augment: Augment | None = None) -> None:
        self.coco = coco
        self.augment = augment
        self.size = pose.input_size
        self.expand = pose.box_expand
        self.skipped = coco.skipped
        self.people = [(i, ann) for i, img in enumerate(coco.images) for ann in coco.annotations[img["id"]]
                       if not ann["iscrowd"] and ann["num_keypoints"] > 0]
        self._cache = ImageCache(cache)

    def __len__(self) -> int:
        return len(self.people)

    def key(self, index: int) -> str:
        image_index, ann = self.people[index]
        return f"{self.coco.images[image_index]['path']}#{ann['bbox']}"

    def crop_box(self, index: int) -> tuple[float, float, float]:
        """(x0, y0, side) of the square crop around person ``index``, in original pixels."""
        x, y, w, h = self.people[index][1]["bbox"]
        side = max(w, h) * self.expand
        return x + w / 2 - side / 2, y + h / 2 - side / 2, side

    def __getitem__(self, index: int):
        image_index, ann = self.people[index]
        x0, y0, side = self.crop_box(index)

        def decode():
            img = read_image(self.coco.images[image_index]["path"])
            # EXTENT maps the float box onto the output exactly; outside the image is black.
            crop = img.transform((self.size, self.size), Image.Transform.EXTENT,
                                 (x0, y0, x0 + side, y0 + side), Image.Resampling.BILINEAR)
            return to_tensor(crop)
        keypoints = torch.tensor(ann["keypoints"], dtype=torch.float32).view(-1, 3)
        scale = self.size / side
        keypoints[:, 0] = (keypoints[:, 0] - x0) * scale
        keypoints[:, 1] = (keypoints[:, 1] - y0) * scale
        crop = self._cache.get(index, decode)
        if self.augment is not None:
            sample = self.augment(Sample(crop, keypoints=keypoints[None]))
            crop, keypoints = sample.image, sample.keypoints[0]
        return crop, keypoints, index


class PoseNet(nn.Module):
    """Backbone -> conv5 -> stride-2 deconvolutions -> one heatmap per keypoint."""

    def __init__(self, backbone: Backbone, num_keypoints: int, pose: PoseConfig, meta: dict) -> None:
        super().__init__()
        self.normalize = Normalize(meta)
        self.backbone = backbone
        layers: list[nn.Module] = []
        channels = backbone.feature_dim
        for _ in range(pose.deconv_layers):
            layers += [nn.ConvTranspose2d(channels, pose.deconv_channels, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(pose.deconv_channels), nn.ReLU(inplace=True)]
            channels = pose.deconv_channels
        self.deconv = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, num_keypoints, 1)
        self.heatmap_sigma = pose.heatmap_sigma
        nn.init.normal_(self.head.weight, std=0.001)
        nn.init.zeros_(self.head.bias)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Heatmaps (B, K, h, w) for uint8 crops (B, 3, S, S)."""
        return self.head(self.deconv(self.backbone.forward_stages(self.normalize(crops))["conv5"]))


def gaussian_targets(keypoints: torch.Tensor, shape: tuple[int, int], stride: float, sigma: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Target heatmaps (B, K, h, w) and weights (B, K): 1 for labelled keypoints inside the crop.

    Heatmap pixel j covers crop pixels [j * stride, (j + 1) * stride), so a
    keypoint at crop x lies at heatmap coordinate x / stride - 0.5.
    """
    h, w = shape
    centre_x = keypoints[..., 0] / stride - 0.5
    centre_y = keypoints[..., 1] / stride - 0.5
    xs = torch.arange(w, dtype=torch.float32, device=keypoints.device).view(1, 1, 1, w)
    ys = torch.arange(h, dtype=torch.float32, device=keypoints.device).view(1, 1, h, 1)
    dist = (xs - centre_x[..., None, None]) ** 2 + (ys - centre_y[..., None, None]) ** 2
    inside = (centre_x > -0.5) & (centre_x < w - 0.5) & (centre_y > -0.5) & (centre_y < h - 0.5)
    weights = ((keypoints[..., 2] > 0) & inside).float()
    return torch.exp(-dist / (2 * sigma ** 2)), weights


def decode_heatmaps(heatmaps: torch.Tensor, stride: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, 2) crop coordinates and (B, K) peak values: the argmax, moved a quarter pixel
    towards the higher neighbour (the usual sub-pixel refinement)."""
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, -1)
    peak, index = flat.max(-1)
    x, y = (index % w).float(), torch.div(index, w, rounding_mode="floor").float()
    padded = nn.functional.pad(heatmaps, (1, 1, 1, 1), mode="replicate").reshape(b, k, -1)
    at = (y.long() + 1) * (w + 2) + x.long() + 1

    def neighbour(offset: int) -> torch.Tensor:
        return padded.gather(-1, (at + offset)[..., None])[..., 0]
    x = x + 0.25 * torch.sign(neighbour(1) - neighbour(-1))
    y = y + 0.25 * torch.sign(neighbour(w + 2) - neighbour(-(w + 2)))
    return torch.stack([(x + 0.5) * stride, (y + 0.5) * stride], -1), peak


class PoseTask(CocoTask):
    name = "pose"
    primary_metric = "AP"
    annotations = "annotations/person_keypoints_{split}.json"
    kind = "keypoints"

    def dilation(self, cfg: FinetuneConfig) -> tuple[bool, bool, bool]:
        return (False, False, cfg.pose.output_stride == 16)

    def load_train(self, cfg: FinetuneConfig) -> PoseDataset:
        coco = self.read_train(cfg)
        names = next(c for c in coco.categories if isinstance(c.get("keypoints"), list))["keypoints"]
        return PoseDataset(coco, cfg.pose, cfg.data.cache_images, Augment(cfg.train, flip_pairs(names)))

    def load_test(self, cfg: FinetuneConfig, test_set: str) -> PoseDataset | None:
        coco = self.read_test(cfg, test_set)
        return PoseDataset(coco, cfg.pose, cfg.data.cache_images) if coco else None

    def build_model(self, backbone: Backbone, cfg: FinetuneConfig, train_set: PoseDataset, meta: dict) -> PoseNet:
        num_keypoints = len(keypoint_sigmas(train_set.coco.categories, cfg.pose.default_oks_sigma))
        return PoseNet(backbone, num_keypoints, cfg.pose, meta)

    def collate(self, items: list):
        crops, keypoints, indices = zip(*items)
        return torch.stack(crops), torch.stack(keypoints), list(indices)

    def loss(self, model: PoseNet, batch) -> dict[str, torch.Tensor]:
        crops, keypoints, _ = batch
        heatmaps = model(crops).float()  # the loss in fp32 also under autocast
        stride = crops.shape[-1] / heatmaps.shape[-1]
        targets, weights = gaussian_targets(keypoints, heatmaps.shape[-2:], stride, model.heatmap_sigma)
        # Squared error summed over each heatmap, averaged over labelled keypoints.
        per_keypoint = ((heatmaps - targets) ** 2).sum((-2, -1))
        return {"loss_heatmap": (per_keypoint * weights).sum() / weights.sum().clamp(min=1)}

    @torch.inference_mode()
    def predict(self, model: PoseNet, dataset: PoseDataset, batch_size: int, cache: dict) -> None:
        """Fill ``cache[person key]`` with (keypoints [x, y, 1] * K in original pixels, score)."""
        model.eval()
        device = model_device(model)
        todo = [i for i in range(len(dataset)) if dataset.key(i) not in cache]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            crops = torch.stack([dataset[i][0] for i in chunk])
            heatmaps = model(crops.to(device)).float().cpu()
            points, peaks = decode_heatmaps(heatmaps, crops.shape[-1] / heatmaps.shape[-1])
            for index, xy, peak in zip(chunk, points, peaks):
                x0, y0, side = dataset.crop_box(index)
                xy = xy * (side / dataset.size) + torch.tensor([x0, y0])
                flat = torch.cat([xy, torch.ones(len(xy), 1)], 1).flatten()
                cache[dataset.key(index)] = ([round(float(v), 2) for v in flat], float(peak.mean()))

    def evaluate(self, model: PoseNet, dataset: PoseDataset, cfg: FinetuneConfig, cache: dict) -> dict[str, float]:
        self.predict(model, dataset, cfg.train.eval_batch_size, cache)
        results = []
        for index, (image_index, ann) in enumerate(dataset.people):
            keypoints, score = cache[dataset.key(index)]
            results.append({"image_id": dataset.coco.images[image_index]["id"], "keypoints": keypoints,
                            "category_id": ann["category_id"], "score": score})
        sigmas = keypoint_sigmas(dataset.coco.categories, cfg.pose.default_oks_sigma)
        return coco_metrics(dataset.coco.gt, results, "keypoints", kpt_sigmas=sigmas)


TASK = PoseTask()
