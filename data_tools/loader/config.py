"""Typed settings of the streaming loader (a section of the pretraining config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datascale.config import require

# The paper's pretraining input (Sun et al. 2017): shorter side resized to 340, random 299 crop.
PAPER_RESIZE, PAPER_CROP = 340, 299


@dataclass
class LoaderConfig:
    """Loader settings (a config schema: YAML + ``--set loader.batch_size=64``)."""

    batch_size: int | None = None       # per rank; None: the stage sets it (pretraining: deepspeed.micro_batch)
    num_workers: int = 2                # DataLoader worker processes per rank (0: in-process)
    shuffle_buffer: int = 1000          # samples held for shuffling, per worker
    seed: int = 0
    transform: Literal["paper", "demo"] = "demo"
    image_size: int = 64                # demo transform crop size (paper: 299)
    hierarchy_closure: bool = False     # add every ancestor of each label
    targets: Literal["dense", "sparse"] = "dense"
    prefetch_factor: int = 2            # batches prefetched per worker
    # How a batch's pixels leave the workers: "float" (float32 in [-1, 1]), or "uint8" (the raw
    # planar pixels, 4x fewer bytes through shared memory and to a GPU), which the consumer scales
    # to the same floats with data_tools.loader.transforms.model_input, on its device.
    pixels: Literal["float", "uint8"] = "float"

    @property
    def crop_size(self) -> int:
        """The side of the images the model sees: 299 for ``paper``, else ``image_size``."""
        return PAPER_CROP if self.transform == "paper" else self.image_size

    def validate(self) -> None:
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", "must be at least 1")
        require(self.num_workers >= 0, "num_workers", "must be 0 or more")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", "must be at least 1 (1: no shuffle)")
        require(self.image_size >= 8, "image_size", "must be at least 8")
        require(self.prefetch_factor >= 1, "prefetch_factor", "must be at least 1")
