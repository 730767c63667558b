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

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image

from datascale.config import to_dict
from datascale.errors import DataError

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


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (the checkpoint's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
class _TensorPreparer:
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


class BackboneEmbedder(Embedder):
    """Global-average-pooled conv5 features of a pretrained ``backbone.pt``, unit-normalised.

    With ``pca_dim`` > 0 the features are PCA-reduced (fitted on pool images,
    saved as ``pca.npz`` in the index folder) and re-normalised, which keeps
    the stored vectors and the index small at 300M images.
    Cost: one forward pass per image (CPU here, GPU under the launcher).
    """

    name = "backbone"

    def __init__(self, cfg: Any) -> None:
        from scaling.models import IMAGE_MEAN, IMAGE_STD
        from scaling.backbone_io import backbone_paths, load_backbone
        import torch
        self.cfg = cfg.backbone
        weights, _ = backbone_paths(self.cfg.checkpoint)
        self.model, meta = load_backbone(self.cfg.checkpoint, self.cfg.arch)
        self.model.eval()
        # Under the DeepSpeed launcher each local rank drives its own GPU.
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.arch = meta["arch"]
        self.feature_dim = int(self.model.feature_dim)
        self.checkpoint_sha256 = file_sha256(weights)
        self._mean = tuple(meta.get("image_mean", IMAGE_MEAN))
        self._std = tuple(meta.get("image_std", IMAGE_STD))
        self.pca_mean: np.ndarray | None = None
        self.pca_components: np.ndarray | None = None
        self.state_file = "pca.npz" if self.cfg.pca_dim else None
        if self.cfg.pca_dim > self.feature_dim:
            raise DataError(f"backbone.pca_dim {self.cfg.pca_dim} exceeds the {self.arch} "
                            f"feature dimension {self.feature_dim}; lower it")
        self.dim = self.cfg.pca_dim or self.feature_dim

    def preparer(self) -> Callable[[Image.Image], np.ndarray]:
        return _TensorPreparer(self.cfg.image_size, self._mean, self._std)

    def decode_side(self) -> int:
        return self.cfg.image_size

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Unit-normalised pooled features before PCA, (B, feature_dim) float32."""
        import torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return unit_rows(out.float().cpu().numpy())

    def embed(self, batch: np.ndarray) -> np.ndarray:
        feats = self.features(batch)
        if not self.cfg.pca_dim:
            return feats
        if self.pca_components is None:
            raise DataError("the backbone embedder's PCA is not fitted; build the index first")
        return unit_rows((feats - self.pca_mean) @ self.pca_components.T)

    def needs_fit(self) -> bool:
        return bool(self.cfg.pca_dim) and self.pca_components is None

    def fit(self, batches: Iterable[np.ndarray]) -> None:
        feats = np.concatenate([self.features(b) for b in batches], axis=0)
        if len(feats) < 2 * self.cfg.pca_dim:
            raise DataError(f"only {len(feats)} pool images to fit a {self.cfg.pca_dim}-d PCA; "
                            "lower backbone.pca_dim or use a larger pool")
        mean = feats.mean(axis=0)
        # SVD of the centred sample: rows of vt are the principal directions.
        _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
        self.pca_mean, self.pca_components = mean.astype(np.float32), vt[: self.cfg.pca_dim].astype(np.float32)

    def save_state(self, path: Path) -> None:
        from datascale.atomic import atomic_path
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, mean=self.pca_mean, components=self.pca_components)

    def load_state(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            self.pca_mean, self.pca_components = data["mean"], data["components"]
        if self.pca_components.shape != (self.cfg.pca_dim, self.feature_dim):
            raise DataError(f"{path} holds a PCA of shape {self.pca_components.shape}, expected "
                            f"({self.cfg.pca_dim}, {self.feature_dim}); rebuild the index")

    def identity(self) -> dict:
        ident = {"name": self.name, "dim": self.dim, "arch": self.arch,
                 "feature_dim": self.feature_dim, "checkpoint_sha256": self.checkpoint_sha256,
                 "image_size": self.cfg.image_size, "pca_dim": self.cfg.pca_dim}
        if self.pca_components is not None:
            ident["pca_sha256"] = hashlib.sha256(self.pca_components.tobytes()).hexdigest()
        return ident


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EmbedderSpec:
    """A registered embedder: its factory and the cosine threshold used when nothing is calibrated."""

    factory: Callable[[Any], Embedder]
    default_threshold: float
    summary: str


# Default thresholds: pixels from the demo world's calibration (0.86 for precision >= 0.95
# with the demo views alone, 0.92-0.93 with crop alignment; real-photo copies score >= 0.92,
# distinct real photos <= 0.35).
# backbone: a conservative guess; calibrate it (--ground-truth) for each checkpoint.
EMBEDDERS: dict[str, EmbedderSpec] = {
    "pixels": EmbedderSpec(PixelsEmbedder, 0.85,
                           "model-free DCT + colour-layout descriptor (resize/re-encode/colour robust)"),
    "backbone": EmbedderSpec(BackboneEmbedder, 0.90,
                             "pooled features of a pretrained backbone.pt (optionally PCA-reduced)"),
}


def make_embedder(cfg: Any) -> Embedder:
    """The embedder named ``cfg.name`` (an EmbedderConfig), built from its config section."""
    return EMBEDDERS[cfg.name].factory(cfg)
