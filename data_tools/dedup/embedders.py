"""Embedders: encoded image -> L2-normalised float32 vector, chosen by name.

An embedder is two halves so that decoding scales over processes:

* ``preparer()`` returns a small picklable callable PIL image -> array that runs
  in worker processes (decode, resize, normalise);
* ``embed(batch)`` turns a stacked batch of prepared arrays into unit vectors
  in the main process (a DCT for ``pixels``, a forward pass for ``backbone``).

Registry :data:`EMBEDDERS` maps a name to its factory and a default cosine
threshold (used only when an audit has neither ``--threshold`` nor ground
truth to calibrate on). Decoding and worker processes: :mod:`data_tools.dedup.prepare`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image

from datascale.config import to_dict


log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- base


class Embedder:
    """Base class: subclasses set ``name``/``dim`` and implement the two halves."""

    name = "base"
    dim = 0
    #: file (in the index folder) holding state fitted on the pool, e.g. a PCA; None if stateless
    state_file: str | None = None

    def preparer(self) -> Callable[[Image.Image], np.ndarray]:
        """A picklable callable (runs in workers): RGB image -> prepared float32 array."""
        raise TypeError(f"{type(self).__name__} must implement preparer()")

    def decode_side(self) -> int:
        """Smallest side the decoder must keep (see :func:`decode_image`)."""
        return 0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, ...) prepared arrays -> (B, dim) float32 unit rows."""
        raise TypeError(f"{type(self).__name__} must implement embed()")

    @classmethod
    def input_files(cls, cfg: Any) -> dict[str, Path]:
        """Files this embedder reads for ``cfg`` (an EmbedderConfig), pinned in lineage: none by default."""
        return {}

    def identity(self) -> dict:
        """What must match between the index and the queries (name, dim, parameters, hashes)."""
        return {"name": self.name, "dim": self.dim}

    def needs_fit(self) -> bool:
        """True while state fitted on pool images (e.g. PCA) is still missing."""
        return False

    def fit(self, batches: Iterable[np.ndarray]) -> None:
        """Fit the state on prepared batches of pool images (only when ``needs_fit``)."""

    def save_state(self, path: Path) -> None:
        """Write fitted state to ``path`` atomically."""

    def load_state(self, path: Path) -> None:
        """Read fitted state written by :meth:`save_state`."""


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------- pixels


@dataclass(frozen=True)
class _ThumbPreparer:
    size: int

    def __call__(self, image: Image.Image) -> np.ndarray:
        # BOX (area average) when shrinking: no aliasing, so a resized or
        # re-encoded copy lands on the same thumbnail; bilinear when growing.
        shrinking = min(image.size) >= self.size
        method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        thumb = image.resize((self.size, self.size), method)
        return np.asarray(thumb, dtype=np.float32) / 255.0


class PixelsEmbedder(Embedder):
    """Model-free descriptor: low-frequency DCT of a grey thumbnail + coarse colour layout.

    * grey: the ``gray_coefficients`` lowest 2-D DCT frequencies of a
      ``thumb_size`` thumbnail (DC dropped, so brightness shifts vanish),
      scaled by frequency**w to flatten the 1/f spectrum of photos (otherwise
      the two or three lowest terms dominate every cosine), unit-normalised
      (contrast changes vanish);
    * colour: mean red-green and yellow-blue per cell of a grid, unit-normalised
      with a floor so near-grey images keep a small colour part;
    * the two parts are concatenated with ``colour_weight`` and unit-normalised.

    The whole image is squashed to a square, so resizes and aspect changes
    match; crops and flips are handled by query views (see views.py).
    Cost: one thumbnail decode (JPEG draft mode) + a 32x32 DCT per image.
    """

    name = "pixels"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg.pixels
        size = self.cfg.thumb_size
        pairs = sorted(((u, v) for u in range(size) for v in range(size) if u + v > 0),
                       key=lambda p: (p[0] + p[1], p[0]))[: self.cfg.gray_coefficients]
        self._rows = np.array([p[0] for p in pairs])
        self._cols = np.array([p[1] for p in pairs])
        self._weights = np.hypot(self._rows, self._cols).astype(np.float32) ** self.cfg.frequency_weight
        self.dim = len(pairs) + 2 * self.cfg.colour_grid ** 2

    def preparer(self) -> Callable[[Image.Image], np.ndarray]:
        return _ThumbPreparer(self.cfg.thumb_size)

    def decode_side(self) -> int:
        return 2 * self.cfg.thumb_size

    def embed(self, batch: np.ndarray) -> np.ndarray:
        from scipy.fft import dctn
        rgb = np.asarray(batch, dtype=np.float32)
        grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        coeffs = dctn(grey, axes=(1, 2), norm="ortho")[:, self._rows, self._cols] * self._weights
        parts = [unit_rows(coeffs)]
        grid = self.cfg.colour_grid
        if grid:
            n, size = len(rgb), self.cfg.thumb_size
            red_green = rgb[..., 0] - rgb[..., 1]
            yellow_blue = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
            cells = [c.reshape(n, grid, size // grid, grid, size // grid).mean(axis=(2, 4)).reshape(n, -1)
                     for c in (red_green, yellow_blue)]
            colour = np.concatenate(cells, axis=1)
            colour /= np.linalg.norm(colour, axis=1, keepdims=True) + 0.05
            parts.append(self.cfg.colour_weight * colour)
        return unit_rows(np.concatenate(parts, axis=1))

    def identity(self) -> dict:
        return {"name": self.name, "dim": self.dim, "params": to_dict(self.cfg)}


# --------------------------------------------------------------------------- backbone


@dataclass(frozen=True)
class TensorPreparer:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> np.ndarray:
        # The whole image squashed to a square (no centre crop): a crop would
        # throw away exactly the border a cropped copy may still share.
        pixels = np.asarray(image.resize((self.size, self.size), Image.Resampling.BILINEAR),
                            dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EmbedderSpec:
    """A registered embedder: its class and the cosine threshold used when nothing is calibrated.

    ``factory`` is the class, or ``"module:Class"`` for one that lives in a
    later layer (the backbone embedder is model code in ``scaling``): it is
    imported when first used, so this package imports nothing from there.
    """

    factory: type[Embedder] | str
    default_threshold: float
    summary: str

    def resolve(self) -> type[Embedder]:
        if isinstance(self.factory, str):
            module, _, name = self.factory.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.factory


# Default thresholds: pixels from the demo world's calibration (0.86 for precision >= 0.95
# with the demo views alone, 0.91-0.93 with crop alignment; real-photo copies, crops of a
# larger pool photo included, score >= 0.96 and look-alike distinct photos (the other half
# of the same photo) <= 0.79: benchmarks/bench_dedup_photos.py).
# backbone: a conservative guess; calibrate it (--ground-truth) for each checkpoint.
EMBEDDERS: dict[str, EmbedderSpec] = {
    "pixels": EmbedderSpec(PixelsEmbedder, 0.85,
                           "model-free DCT + colour-layout descriptor (resize/re-encode/colour robust)"),
    "backbone": EmbedderSpec("scaling.models.embedder:BackboneEmbedder", 0.90,
                             "pooled features of a pretrained backbone.pt (optionally PCA-reduced)"),
}


def make_embedder(cfg: Any) -> Embedder:
    """The embedder named ``cfg.name`` (an EmbedderConfig), built from its config section."""
    return EMBEDDERS[cfg.name].resolve()(cfg)


def embedder_inputs(cfg: Any) -> dict[str, Path]:
    """Files the embedder named ``cfg.name`` reads (pinned in the index's lineage)."""
    return EMBEDDERS[cfg.name].resolve().input_files(cfg)
