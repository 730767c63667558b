"""Streaming label statistics for subsets: raw and hierarchy-closed, vectorised per batch.

Subsets are nested rank prefixes, so a manifest batch is cut into segments
between consecutive subset boundaries; each segment is tallied once and a
subset's statistics are the sum of the segments below its boundary.
"""

from __future__ import annotations

import numpy as np

from data_tools.labels import Vocabulary, tail_summary


def ancestor_table(vocab: Vocabulary) -> np.ndarray:
    """(C, depth) int64: each class followed by its ancestors, padded with -1."""
    depth = vocab.max_depth()
    table = np.full((len(vocab), depth), -1, dtype=np.int32)  # int32: half the memory traffic
    for cid in range(len(vocab)):
        chain = (cid, *vocab.ancestors(cid))
        table[cid, : len(chain)] = chain
    return table


def list_arrays(column) -> tuple[np.ndarray, np.ndarray]:
    """(flat values int64, offsets int64) of a pyarrow list column (chunked or not)."""
    import pyarrow as pa
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = np.asarray(column.offsets, dtype=np.int64)
    values = np.asarray(column.values, dtype=np.int64)
    return values[offsets[0]: offsets[-1]], offsets - offsets[0]


def map_labels(values: np.ndarray, offsets: np.ndarray, label_map: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``label_map`` (old id -> new id or -1) to list labels; drops unmapped labels."""
    mapped = label_map[values]
    keep = mapped >= 0
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    counts = np.bincount(rows[keep], minlength=len(offsets) - 1)
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return mapped[keep], new_offsets


class SegmentTally:
    """Label counts of a set of rows: raw, and closed over the hierarchy."""

    def __init__(self, num_classes: int) -> None:
        self.images = 0
        self.labels = 0
        self.closed_labels = 0
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.closed_counts = np.zeros(num_classes, dtype=np.int64)

    def add(self, values: np.ndarray, offsets: np.ndarray, closure: np.ndarray,
            label_map: np.ndarray | None) -> None:
        """Count rows given as flat source-space labels + offsets.

        ``closure`` is :func:`ancestor_table` of the source vocabulary;
        ``label_map`` maps source ids to this tally's ids (None: identity).
        Cost: O(labels x depth), plus a sort for rows with several labels.
        """
        classes = len(self.counts)
        lengths = np.diff(offsets)
        self.images += len(lengths)
        raw = values
        if label_map is not None:
            raw = label_map[values]
            raw = raw[raw >= 0]
        self.labels += len(raw)
        self.counts += np.bincount(raw, minlength=classes)
        starts = offsets[:-1]
        # A single label's ancestor chain has no repeats: count the single-label
        # images per source class, then push the counts up the chains (C x depth).
        per_class = np.bincount(values[starts[lengths == 1]], minlength=len(closure))
        for level in closure.T:
            target = level if label_map is None else np.where(level >= 0, label_map[level], -1)
            ok = target >= 0
            pushed = np.bincount(target[ok], weights=per_class[ok], minlength=classes)
            self.closed_counts += pushed.astype(np.int64)
            self.closed_labels += int(pushed.sum())
        is_multi = lengths > 1
        if not is_multi.any():
            return
        # Rows with several labels: their labels' positions without a per-label repeat
        # over the whole batch (row start + index within the row).
        sizes = lengths[is_multi]
        rows = np.repeat(np.flatnonzero(is_multi), sizes)
        first = np.cumsum(sizes) - sizes
        positions = np.repeat(starts[is_multi] - first, sizes) + np.arange(len(rows))
        multi = closure[values[positions]]               # (labels, depth), -1 padded
        if label_map is not None:
            multi = np.where(multi >= 0, label_map[multi], -1)
        # (row, class) packed as row << bits | class: shifts and masks, not * and %.
        bits = max(int(classes).bit_length(), 1)
        pairs = ((rows[:, None] << bits) | multi)[multi >= 0]
        # Sort + neighbour test: numpy's hash-based np.unique is far slower on int64 here.
        pairs.sort()
        pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]
        self.closed_labels += len(pairs)
        self.closed_counts += np.bincount(pairs & ((1 << bits) - 1), minlength=classes)

    def merge(self, other: "SegmentTally") -> None:
        self.images += other.images
        self.labels += other.labels
        self.closed_labels += other.closed_labels
        self.counts += other.counts
        self.closed_counts += other.closed_counts

    def summary(self, with_counts: bool = True) -> dict:
        """Images, labels/image, classes present and tail, without and with closure."""
        def part(labels: int, counts: np.ndarray) -> dict:
            out = {"labels": int(labels),
                   "labels_per_image": labels / self.images if self.images else 0.0,
                   **tail_summary(counts)}
            if with_counts:
                out["class_images"] = counts.tolist()
            return out
        return {"images": int(self.images), "labels": part(self.labels, self.counts),
                "closed": part(self.closed_labels, self.closed_counts)}
