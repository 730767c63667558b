"""The class vocabulary: ids, names, the hierarchy, closure and noise statistics.

``classes.json`` is a list of ``{"id", "name", "parent"}`` records (extra keys
are kept): ids are 0..C-1, ``parent`` is another id or null for a root.
Labels on a sample are sparse lists of class ids; "closing" a label set adds
every ancestor ("apple" implies "fruit").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from datascale.atomic import write_json
from datascale.errors import DataError


@dataclass
class Vocabulary:
    """Classes with names and a parent hierarchy; immutable once built."""

    names: list[str]
    parents: list[int | None]
    extra: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise DataError("the class vocabulary is empty")
        if len(self.parents) != n:
            raise DataError("names and parents differ in length")
        self._by_name: dict[str, int] = {}
        for i, name in enumerate(self.names):
            if name in self._by_name:
                raise DataError(f"class name {name!r} appears twice (ids {self._by_name[name]} and {i})")
            self._by_name[name] = i
        for i, parent in enumerate(self.parents):
            if parent is not None and not 0 <= parent < n:
                raise DataError(f"class {i} ({self.names[i]!r}) has unknown parent id {parent}")
        self._ancestors = [self._walk_up(i) for i in range(n)]
        if not self.extra:
            self.extra = [{} for _ in range(n)]

    def _walk_up(self, cid: int) -> tuple[int, ...]:
        chain, seen, node = [], {cid}, self.parents[cid]
        while node is not None:
            if node in seen:
                raise DataError(f"the class hierarchy has a cycle through class {node} ({self.names[node]!r})")
            seen.add(node)
            chain.append(node)
            node = self.parents[node]
        return tuple(chain)

    def __len__(self) -> int:
        return len(self.names)

    # -- lookups ---------------------------------------------------------------
    def ancestors(self, cid: int) -> tuple[int, ...]:
        """Proper ancestors of ``cid``, nearest first."""
        return self._ancestors[cid]

    def depth(self, cid: int) -> int:
        """0 for a root."""
        return len(self._ancestors[cid])

    def max_depth(self) -> int:
        """Number of levels in the hierarchy (a single root level is 1)."""
        return 1 + max(len(a) for a in self._ancestors)

    def children(self, cid: int | None) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == cid]

    def leaves(self) -> list[int]:
        has_child = {p for p in self.parents if p is not None}
        return [i for i in range(len(self)) if i not in has_child]

    def id_of(self, label: int | str) -> int:
        """A class id from an id or a name; DataError naming the label if unknown."""
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if 0 <= int(label) < len(self):
                return int(label)
            raise DataError(f"label id {label} is outside the vocabulary (0..{len(self) - 1})")
        text = str(label).strip()
        if text in self._by_name:
            return self._by_name[text]
        if text.isdigit() and int(text) < len(self):
            return int(text)
        raise DataError(f"unknown class {label!r}: not a class name or id in classes.json")

    def close(self, labels: Iterable[int]) -> list[int]:
        """The label set with every ancestor added, sorted."""
        out: set[int] = set()
        for cid in labels:
            out.add(cid)
            out.update(self._ancestors[cid])
        return sorted(out)

    # -- files -----------------------------------------------------------------
    def to_records(self) -> list[dict]:
        return [{"id": i, "name": n, "parent": p, **e}
                for i, (n, p, e) in enumerate(zip(self.names, self.parents, self.extra))]

    def save(self, path: str | Path) -> None:
        """Write ``classes.json`` atomically."""
        write_json(path, self.to_records(), indent=1)

    @classmethod
    def from_records(cls, records: Sequence[dict], source: str = "classes.json") -> "Vocabulary":
        if not isinstance(records, list) or not records:
            raise DataError(f"{source}: expected a non-empty list of classes")
        ordered = sorted(records, key=lambda r: r.get("id", -1))
        for i, rec in enumerate(ordered):
            if not isinstance(rec, dict) or "name" not in rec or rec.get("id") != i:
                raise DataError(f"{source}: class records need ids 0..{len(records) - 1} and a name; "
                                f"problem at {rec!r}")
        names = [str(r["name"]) for r in ordered]
        parents = [r.get("parent") for r in ordered]
        extra = [{k: v for k, v in r.items() if k not in ("id", "name", "parent")} for r in ordered]
        return cls(names, parents, extra)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"class vocabulary not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_records(records, str(path))

    @classmethod
    def flat(cls, names: Sequence[str]) -> "Vocabulary":
        """A vocabulary without hierarchy (e.g. from folder names)."""
        return cls(list(names), [None] * len(names))


def multi_hot(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """Dense float32 (N, C) targets from sparse label lists (absent labels are 0)."""
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    for row, ids in enumerate(labels):
        if len(ids):
            out[row, np.asarray(ids, dtype=np.int64)] = 1.0
    return out


@dataclass
class NoiseStats:
    """How noisy labels compare with true ones, over a collection."""

    images: int
    noisy_labels: int
    true_labels: int
    correct_labels: int

    @property
    def precision(self) -> float:
        """Fraction of given (noisy) labels that are true."""
        return self.correct_labels / self.noisy_labels if self.noisy_labels else float("nan")

    @property
    def recall(self) -> float:
        """Fraction of true labels that were given."""
        return self.correct_labels / self.true_labels if self.true_labels else float("nan")

    @property
    def noise_rate(self) -> float:
        """Fraction of given labels that are wrong (1 - precision), the paper's ~20%."""
        return 1.0 - self.precision

    def as_dict(self) -> dict:
        return {"images": self.images, "noisy_labels": self.noisy_labels,
                "true_labels": self.true_labels, "correct_labels": self.correct_labels,
                "precision": self.precision, "recall": self.recall,
                "noise_rate": self.noise_rate}


def noise_stats(pairs: Iterable[tuple[Sequence[int], Sequence[int]]]) -> NoiseStats:
    """Compare (noisy, true) label lists per image; streaming, O(1) memory."""
    images = noisy = true = correct = 0
    for given, truth in pairs:
        given_set, true_set = set(given), set(truth)
        images += 1
        noisy += len(given_set)
        true += len(true_set)
        correct += len(given_set & true_set)
    return NoiseStats(images, noisy, true, correct)


def class_frequencies(label_lists: Iterable[Sequence[int]], num_classes: int) -> np.ndarray:
    """Images per class (int64, length C)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for ids in label_lists:
        if len(ids):
            np.add.at(counts, np.unique(np.asarray(ids, dtype=np.int64)), 1)
    return counts


def tail_summary(counts: np.ndarray) -> dict:
    """The long-tail numbers a data card reports."""
    present = counts > 0
    return {
        "classes": int(len(counts)),
        "classes_present": int(present.sum()),
        "classes_lt_20": int(((counts > 0) & (counts < 20)).sum()),
        "classes_lt_100": int(((counts > 0) & (counts < 100)).sum()),
        "max_class_images": int(counts.max()) if len(counts) else 0,
        "median_class_images": float(np.median(counts[present])) if present.any() else 0.0,
    }
