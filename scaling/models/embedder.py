"""The ``backbone`` dedup embedder: pooled conv5 features of a pretrained ``backbone.pt``.

Registered by name in :data:`data_tools.dedup.embedders.EMBEDDERS` (as a
string, so that the data layer imports nothing from ``scaling``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image

from datascale.atomic import atomic_path
from datascale.errors import DataError
from datascale.lineage import sha256_file
from data_tools.dedup.embedders import Embedder, TensorPreparer, unit_rows
from scaling.models.backbones import IMAGE_MEAN, IMAGE_STD
from scaling.models.files import backbone_paths, load_backbone


class BackboneEmbedder(Embedder):
    """Global-average-pooled conv5 features of a pretrained ``backbone.pt``, unit-normalised.

    With ``pca_dim`` > 0 the features are PCA-reduced (fitted on pool images,
    saved as ``pca.npz`` in the index folder) and re-normalised, which keeps
    the stored vectors and the index small at 300M images.
    Cost: one forward pass per image (CPU here, GPU under the launcher).
    """

    name = "backbone"

    @classmethod
    def input_files(cls, cfg: Any) -> dict[str, Path]:
        return {"checkpoint": backbone_paths(cfg.backbone.checkpoint)[0]}

    def __init__(self, cfg: Any) -> None:
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
        self.checkpoint_sha256 = sha256_file(weights)
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
        return TensorPreparer(self.cfg.image_size, self._mean, self._std)

    def decode_side(self) -> int:
        return self.cfg.image_size

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Unit-normalised pooled features before PCA, (B, feature_dim) float32."""
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
