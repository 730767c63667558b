"""What every downstream task shares: the Task interface, dataset paths, image loading.

A task is an object with the methods of :class:`Task`; ``scaling.finetune.loop``
calls them in order: ``load_train`` / ``load_test`` (readers that validate
the input and count skipped samples), ``build_model`` (on a backbone that was
already frozen or not), ``loss`` per step, ``evaluate`` at the end.
"""

from __future__ import annotations

import abc
import collections
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from datascale.errors import ConfigError, DataError
from data_tools.ranks import sample_ranks
from scaling.models.backbones import IMAGE_MEAN, IMAGE_STD, Backbone
from scaling.tasks.config import DataConfig, FinetuneConfig

log = logging.getLogger(__name__)

TEST_SETS = ("original", "cleaned")


class Task(abc.ABC):
    """One downstream task: data readers, model builder, loss and evaluation."""

    name: str
    #: The metric a study plots against data size.
    primary_metric: str

    def dilation(self, cfg: FinetuneConfig) -> tuple[bool, bool, bool]:
        """``replace_stride_with_dilation`` the backbone needs (none unless overridden)."""
        return (False, False, False)

    @abc.abstractmethod
    def input_files(self, cfg: FinetuneConfig) -> dict[str, Path]:
        """Small files that pin the dataset (annotations, image lists), hashed into the lineage."""

    @abc.abstractmethod
    def load_train(self, cfg: FinetuneConfig) -> torch.utils.data.Dataset:
        """The training set (``.skipped``: Counter of skipped samples by reason)."""

    @abc.abstractmethod
    def load_test(self, cfg: FinetuneConfig, test_set: str) -> Any:
        """The ``"original"`` or ``"cleaned"`` test set (None when no cleaned set is configured)."""

    def check_test(self, train_set: Any, test_set: Any) -> None:
        """Raise DataError when the model trained on ``train_set`` cannot score ``test_set``
        (COCO tasks: the category lists differ). Segmentation reads one labels.txt for both."""

    def train_images(self, train_set: Any) -> int:
        """Images in the training set (a pose set has one item per person, not per image)."""
        return len(train_set)

    @abc.abstractmethod
    def build_model(self, backbone: Backbone, cfg: FinetuneConfig, train_set: Any, meta: dict) -> nn.Module:
        """The task model around ``backbone``; ``meta`` holds the backbone's image_mean/std."""

    @abc.abstractmethod
    def collate(self, items: list) -> Any:
        """Batch a list of dataset items; the batch's last element is the items' dataset indices."""

    def indices(self, batch: Any) -> list[int]:
        """The dataset indices of a collated batch (``dist.log_samples``)."""
        return [int(i) for i in batch[-1]]

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch; their sum is optimised."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, dataset: Any, cfg: FinetuneConfig, cache: dict) -> dict[str, float]:
        """Metrics on one test set. ``cache`` maps an image key to its prediction and is shared
        between test sets, so the cleaned set reuses the original set's predictions."""


# --------------------------------------------------------------------------- paths


def split_paths(data: DataConfig, split: str, annotations: str, images: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of ``split`` ("train"/"test").

    ``annotations``/``images`` are patterns under ``data.root`` with ``{split}``
    replaced by ``data.train_split``/``data.test_split``; the explicit
    ``data.{split}_annotations``/``data.{split}_images`` keys win.
    """
    name = getattr(data, f"{split}_split")
    ann = getattr(data, f"{split}_annotations")
    img = getattr(data, f"{split}_images")
    if data.root is None and (ann is None or img is None):
        raise ConfigError(f"data.root is not set: pass --data DATASET_FOLDER, or set "
                          f"data.{split}_annotations and data.{split}_images")
    root = Path(data.root) if data.root is not None else Path(".")
    ann_path = Path(ann) if ann is not None else root / annotations.format(split=name)
    img_path = Path(img) if img is not None else root / images.format(split=name)
    if not ann_path.is_file():
        raise DataError(f"{split} annotations not found: {ann_path}; check data.root / data.{split}_annotations")
    if not img_path.is_dir():
        raise DataError(f"{split} image folder not found: {img_path}; check data.root / data.{split}_images")
    return ann_path, img_path


def cleaned_path(data: DataConfig) -> Path | None:
    """The cleaned test set file (dedup audit output), or None when not configured."""
    if data.cleaned_test is None:
        return None
    path = Path(data.cleaned_test)
    if not path.is_file():
        raise DataError(f"cleaned test set not found: {path}; check data.cleaned_test")
    return path


def report_skips(what: str, skipped: collections.Counter, kept: int) -> None:
    """Log what a reader left out, by reason (nothing is dropped silently)."""
    if skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        log.warning("%s: kept %d, skipped %s", what, kept, reasons)


def labelled_subset(keys: Sequence[str], data: DataConfig) -> list[int]:
    """Indices (in input order) of the training images ``data.labelled_fraction`` keeps.

    The kept images are the first round(fraction x N) (at least one) in the order of
    their hash rank u = hash(key, data.labelled_salt), so subsets are nested and
    independent of the file's order; ``keys`` must be unique (file names, image ids).
    """
    if data.labelled_fraction >= 1.0:
        return list(range(len(keys)))
    keep = max(1, round(data.labelled_fraction * len(keys)))
    order = np.argsort(sample_ranks(keys, salt=data.labelled_salt), kind="stable")
    return sorted(int(i) for i in order[:keep])


# --------------------------------------------------------------------------- images


class EncodedImage:
    """An image (or mask) held as encoded bytes, e.g. a shard member, usable where a task reads a path.

    ``str()`` gives its name, which is what datasets use as a cache key.
    """

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data

    def __str__(self) -> str:
        return self.name

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)


def as_file(source: Path | EncodedImage):
    """What PIL can open: the path itself, or a fresh file object over the bytes."""
    return source.open() if isinstance(source, EncodedImage) else source


def read_image(path: Path | EncodedImage) -> Image.Image:
    """An RGB PIL image from a file or :class:`EncodedImage`; DataError for an unreadable one."""
    try:
        with Image.open(as_file(path)) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) tensor of an RGB PIL image."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class ImageCache:
    """Decoded, resized images by key; a plain dict when caching is on, else a pass-through.

    Memory: about 3 * size^2 bytes per cached image (50 MB for 1000 images at 128 px).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._items: dict[Any, Any] = {}

    def get(self, key: Any, load) -> Any:
        if not self.enabled:
            return load()
        if key not in self._items:
            self._items[key] = load()
        return self._items[key]


class Normalize(nn.Module):
    """uint8 or [0, 1] float images -> normalised floats, with the backbone's statistics."""

    def __init__(self, meta: dict) -> None:
        super().__init__()
        mean = meta.get("image_mean", IMAGE_MEAN)
        std = meta.get("image_std", IMAGE_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std


def model_device(model: Any) -> torch.device:
    """Where ``model``'s weights are (its inputs go there); CPU for a model without parameters."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if parameters is not None else None
    return first.device if first is not None else torch.device("cpu")


def image_stats(meta: dict) -> tuple[Sequence[float], Sequence[float]]:
    """(mean, std) the backbone was trained with (ImageNet statistics by default)."""
    return list(meta.get("image_mean", IMAGE_MEAN)), list(meta.get("image_std", IMAGE_STD))
