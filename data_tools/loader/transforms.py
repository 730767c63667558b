"""Image transforms of the pretraining loader, chosen by name in the loader config.

``paper``: resize the shorter side to 340, random 299x299 crop, random
horizontal flip (Sun et al. 2017); ``demo``: the same recipe at demo size
(shorter side image_size + image_size/8, random image_size crop, flip). Eval
uses the same resize and a centre crop. Outputs are uint8 HWC arrays; the
loader scales whole batches to [-1, 1] at once (cheaper than per image), or,
with ``pixels: uint8``, hands the uint8 batch over and the consumer scales it
on its device (:func:`model_input`: the same floats).
JPEGs are decoded with PIL's draft mode at the smallest DCT scale that still
covers the resize target, which gives the same pixels a full decode + resize
would give to within resampling error, several times faster.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from data_tools.loader.config import PAPER_CROP, PAPER_RESIZE


@dataclass(frozen=True)
class CropTransform:
    """Resize the shorter side to ``resize``, crop ``crop`` x ``crop`` (random or centre), flip."""

    resize: int
    crop: int
    train: bool

    def decode(self, data: bytes) -> Image.Image:
        """Decode encoded bytes to RGB, letting JPEG skip detail the resize would discard.

        Raises OSError/ValueError (and PIL's errors) on corrupt bytes.
        """
        image = Image.open(io.BytesIO(data))
        if image.format == "JPEG":
            image.draft("RGB", (self.resize, self.resize))
        if image.mode != "RGB":
            return image.convert("RGB")
        image.load()  # what convert would do first; convert("RGB") of an RGB image is a full copy
        return image

    def __call__(self, image: Image.Image, rng: np.random.Generator | None) -> np.ndarray:
        """The crop of one decoded image as a (crop, crop, 3) uint8 array.

        ``rng`` drives the crop position and the flip (train only); the same
        rng state gives the same crop, which exact resume relies on.
        """
        width, height = image.size
        scale = self.resize / min(width, height)
        size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        image = image.resize(size, Image.BILINEAR)
        if self.train:
            left = int(rng.integers(0, size[0] - self.crop + 1))
            top = int(rng.integers(0, size[1] - self.crop + 1))
        else:
            left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        if self.train and rng.random() < 0.5:
            # PIL's flip, not a reversed numpy view: copying that view to contiguous memory moves
            # 3-byte pixels one at a time and cost ~6% of a loader worker's time (py-spy, 2026-12-03).
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(image)


def paper_transform(image_size: int, train: bool) -> CropTransform:
    """Sun et al. 2017: shorter side 340, 299 crop (image_size is ignored)."""
    return CropTransform(PAPER_RESIZE, PAPER_CROP, train)


def demo_transform(image_size: int, train: bool) -> CropTransform:
    """The paper's recipe scaled to ``image_size`` (pad of image_size/8 before cropping)."""
    return CropTransform(image_size + max(1, image_size // 8), image_size, train)


TRANSFORMS: dict[str, Callable[[int, bool], CropTransform]] = {
    "paper": paper_transform,
    "demo": demo_transform,
}


def batch_tensor(shape: tuple[int, ...], dtype=None):
    """An uninitialised tensor for a batch; in shared memory when made in a DataLoader worker.

    A worker's batch crosses to the main process through shared memory; a
    tensor born there is not copied again on the way (torch's own
    default_collate allocates its batches the same way).
    """
    import torch
    dtype = dtype or torch.float32
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).resize_(shape)


def to_unit_range(batch: np.ndarray):
    """uint8 (N, H, W, 3) -> float32 torch tensor (N, 3, H, W) in [-1, 1]."""
    import torch
    # Transposing the uint8 array first moves 1 byte per value instead of 4
    # (measured: 40% less time than permuting the float tensor).
    planar = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    out = batch_tensor(tuple(planar.shape))
    out.copy_(planar)
    return out.div_(127.5).sub_(1.0)


def to_planar_uint8(batch: np.ndarray):
    """uint8 (N, H, W, 3) -> uint8 torch tensor (N, 3, H, W), in shared memory in a worker:
    a quarter of the float batch's pages to fill and send (``pixels: uint8``)."""
    import torch
    out = batch_tensor((batch.shape[0], 3, *batch.shape[1:3]), torch.uint8)
    np.copyto(out.numpy(), batch.transpose(0, 3, 1, 2))
    return out


def model_input(images, device, dtype, non_blocking: bool = False):
    """A batch's images as the model takes them: float in [-1, 1], on ``device``, in ``dtype``.

    A uint8 batch (``pixels: uint8``) crosses to the device as bytes and is scaled there, with the
    float32 arithmetic of :func:`to_unit_range`, so both hand-overs give the same input."""
    import torch
    if images.dtype != torch.uint8:
        return images.to(device, dtype=dtype, non_blocking=non_blocking)
    scaled = images.to(device, non_blocking=non_blocking).to(torch.float32).div_(127.5).sub_(1.0)
    return scaled if dtype == torch.float32 else scaled.to(dtype)
