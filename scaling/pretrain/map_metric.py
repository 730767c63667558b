"""mAP@100 on a densely labelled eval set (the paper's FastEval14K metric).

For every image only its top-k scoring classes count as predictions. For each
class, the images that predicted it are ranked by score and the class's AP is
the mean precision at each true positive, divided by all positives of the
class in the eval set (so positives outside an image's top-k are misses).
mAP is the mean over classes with at least one positive, or the mean
weighted by positives per class (``weighting="frequency"``).

Which classes are averaged matters once labels are closed over the hierarchy:
internal classes ("fruit") are easy and would dominate. ``mAP@k`` averages
over the eval set's annotated label space (the classes its stored labels
name: the leaves, as FastEval14K is labelled); ``mAP@k_all_levels`` over
every class with a positive after closure. Without closure the two agree.

Scores are compared in fp32 (bf16 logits are cast first). Ties: predictions of
one class with equal scores keep the eval set's image order (a stable sort),
so the earlier image is ranked first; with continuous scores ties are rare.

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

    def compute(self, weighting: Literal["mean", "frequency"] = "mean",
                annotated: np.ndarray | None = None) -> dict:
        """mAP@k over the annotated classes and ``mAP@k_all_levels`` over every class with a
        positive, with the number of classes each averages (``annotated``: bool mask of the
        classes the eval labels name; None: every class)."""
        if self._positives is None or self.images == 0:
            raise ValueError("no eval images were scored")
        ap = average_precision_at_k(np.concatenate(self._classes), np.concatenate(self._scores),
                                    np.concatenate(self._hits), self._positives)
        present = self._positives > 0
        if not present.any():
            raise ValueError("the eval set has no positive labels")
        leaves = present if annotated is None else present & np.asarray(annotated, dtype=bool)
        if not leaves.any():
            raise ValueError("no annotated class of the eval set has a positive")

        def mean(mask: np.ndarray) -> float:
            weights = self._positives[mask] if weighting == "frequency" else None
            return float(np.average(ap[mask], weights=weights))

        key = f"mAP@{self.k}"
        return {key: mean(leaves), f"{key}_all_levels": mean(present), "eval_classes": int(leaves.sum()),
                "eval_classes_all_levels": int(present.sum()), "eval_images": self.images}


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
