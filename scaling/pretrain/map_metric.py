"""mAP@100 on a densely labelled eval set (the paper's FastEval14K metric).

For every image only its top-k scoring classes count as predictions. For each
class, the images that predicted it are ranked by score and the class's AP is
the mean precision at each true positive, divided by all positives of the
class in the eval set (so positives outside an image's top-k are misses).
mAP is the mean over classes with at least one positive, or the mean
weighted by positives per class (``weighting="frequency"``).

Memory: O(N * k) for N eval images (top-k kept per image), never N x C.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np


@dataclass
class TopKAccumulator:
    """Collects per-image top-k predictions and sparse true labels, batch by batch."""

    num_classes: int
    k: int = 100
    _classes: list[np.ndarray] = field(default_factory=list)
    _scores: list[np.ndarray] = field(default_factory=list)
    _hits: list[np.ndarray] = field(default_factory=list)
    _positives: np.ndarray | None = None
    images: int = 0

    def add(self, scores: np.ndarray, labels: Sequence[Sequence[int]]) -> None:
        """Add a batch: ``scores`` (B, C) float, ``labels`` the true class ids per image."""
        scores = np.asarray(scores, dtype=np.float32)
        batch, num_classes = scores.shape
        if num_classes != self.num_classes:
            raise ValueError(f"scores have {num_classes} classes, expected {self.num_classes}")
        k = min(self.k, num_classes)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        truth = np.zeros((batch, num_classes), dtype=bool)
        for row, ids in enumerate(labels):
            if len(ids):
                truth[row, np.asarray(ids, dtype=np.int64)] = True
        if self._positives is None:
            self._positives = np.zeros(num_classes, dtype=np.int64)
        self._positives += truth.sum(axis=0)
        self._classes.append(top.reshape(-1).astype(np.int32))
        self._scores.append(top_scores.reshape(-1))
        self._hits.append(np.take_along_axis(truth, top, axis=1).reshape(-1))
        self.images += batch

    def compute(self, weighting: Literal["mean", "frequency"] = "mean") -> dict:
        """mAP@k and the number of classes it averages over."""
        if self._positives is None or self.images == 0:
            raise ValueError("no eval images were scored")
        ap = average_precision_at_k(np.concatenate(self._classes), np.concatenate(self._scores),
                                    np.concatenate(self._hits), self._positives)
        present = self._positives > 0
        if not present.any():
            raise ValueError("the eval set has no positive labels")
        weights = self._positives[present] if weighting == "frequency" else None
        value = float(np.average(ap[present], weights=weights))
        return {f"mAP@{self.k}": value, "eval_classes": int(present.sum()), "eval_images": self.images}


def average_precision_at_k(classes: np.ndarray, scores: np.ndarray, hits: np.ndarray,
                           positives: np.ndarray) -> np.ndarray:
    """Per-class AP from flat (class, score, hit) prediction triples; vectorised.

    ``positives[c]`` is the number of eval images whose true labels contain c.
    Classes without positives get AP 0 (callers exclude them from the mean).
    """
    num_classes = len(positives)
    order = np.lexsort((-scores, classes))  # by class, then score descending
    cls, hit = classes[order], hits[order].astype(np.float64)
    starts = np.searchsorted(cls, np.arange(num_classes))
    # Rank of each prediction within its class, and running hit count within the class.
    rank = np.arange(len(cls)) - starts[cls] + 1
    cum = np.cumsum(hit)
    before = np.concatenate([[0.0], cum])[starts[cls]]
    precision_at_hit = (cum - before) / rank * hit
    ap_sum = np.bincount(cls, weights=precision_at_hit, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, ap_sum / np.maximum(positives, 1), 0.0)
