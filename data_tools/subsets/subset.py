"""``datascale subsets make``: nested subsets as hash-rank prefixes of the shards.

A subset of N images is {rank < max_rank}, where max_rank is the rank of the
(N+1)-th sample of the rank-ordered shards manifest, so subsets of growing
size are nested and a subset is a prefix of the shard list plus one boundary
shard read with a rank filter (design rule 1). Class-restricted subsets keep
only the labels of given classes (the paper's 941-class ablation), renumber
them 0..K-1 and drop images left without a label. Writes, per subset::

    SUBSETS/NAME/subset.json, manifest.parquet, stats.json, classes.json,
                 config.yaml, complete.json,
                 urls.txt, shards/ (what plain WebDataset reads: data_tools.subsets.wds_view)

Everything streams over the shards manifest in pyarrow batches and uses the
stored ranks; a 300M-row manifest is never held in memory.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from datascale.config import require
from datascale.errors import DataError
from datascale.lineage import read_config_record
from data_tools.labels import Vocabulary
from datascale.formats.wds import ShardSample, iter_shard_samples

log = logging.getLogger(__name__)
STAGE = "subsets"
SUBSET_FILE = "subset.json"
_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


@dataclass
class SubsetsConfig:
    """Which nested subsets ``datascale subsets make`` cuts.

    Run: ``datascale subsets make SHARDS --out SUBSETS --sizes 10M,30M,100M,300M``.
    ``sizes`` are counts (``10M``, ``400``) or, when all are at most 1 and one
    has a decimal point, fractions of the collection (``0.1,0.33,1``).
    """

    sizes: list[str] = field(default_factory=lambda: ["10M", "30M", "100M", "300M"])
    names: list[str] | None = None      # one per size; default from the image count ("10M")
    classes: list[str] | None = None    # keep only these classes (names or ids)
    top_classes: int | None = None      # ... or the K classes with most images
    batch_rows: int = 262_144           # manifest rows per streamed batch
    # Class-restricted subsets: write their own relabelled tars for plain webdataset and
    # open_clip (a full copy of their samples on disk); false: read them through the loader only.
    webdataset_copy: bool = True

    def validate(self) -> None:
        require(len(self.sizes) > 0, "sizes", "give at least one subset size")
        require(self.names is None or len(self.names) == len(self.sizes), "names",
                "give one name per size")
        require(not (self.classes and self.top_classes), "classes",
                "give either classes or top_classes, not both")
        require(self.top_classes is None or self.top_classes >= 1, "top_classes",
                "must be at least 1")
        require(self.batch_rows >= 1024, "batch_rows", "must be at least 1024")


@dataclass
class ShardEntry:
    """One shard of a subset: its path (relative to shards_root), samples in the subset,
    and whether it must be read with the rank filter (only the boundary shard)."""

    path: str
    samples: int
    filter: bool


@dataclass
class Subset:
    """A subset of a shards folder (or all of it): what the loader and dedup read."""

    name: str
    images: int
    max_rank: float
    salt: str
    shards_root: Path
    shards: list[ShardEntry]
    classes: list[int] | None = None    # kept source class ids; subset class i = classes[i]
    fraction: float = 1.0
    folder: Path | None = None
    # With ``classes``: True keeps the images with no kept label (negatives for every class),
    # as an eval set read in a class-restricted subset's label space must; its shard counts
    # are of every image. False (a class-restricted subset): such images are not in it.
    keep_unlabelled: bool = False

    @property
    def path(self) -> Path:
        """The folder this subset was loaded from: the subset folder, or the shards folder."""
        return self.folder if self.folder is not None else self.shards_root

    def shard_paths(self) -> list[Path]:
        """Absolute paths of the subset's shards, in rank order."""
        return [self.shards_root / entry.path for entry in self.shards]

    def source_vocabulary(self) -> Vocabulary:
        """The classes of the shards (the id space of the labels stored in the tars)."""
        return Vocabulary.load(self.shards_root / "classes.json")

    def vocabulary(self) -> Vocabulary:
        """The subset's classes: the source vocabulary, or the kept classes renumbered."""
        if self.folder is not None and (self.folder / "classes.json").is_file():
            return Vocabulary.load(self.folder / "classes.json")
        return restricted_vocabulary(self.source_vocabulary(), self.classes)

    @property
    def num_classes(self) -> int:
        """Number of classes a model trained on this subset predicts."""
        return len(self.classes) if self.classes is not None else len(self.source_vocabulary())

    def label_map(self) -> np.ndarray | None:
        """Source id -> subset id (-1 for dropped classes), or None when nothing is dropped."""
        if self.classes is None:
            return None
        table = np.full(len(self.source_vocabulary()), -1, dtype=np.int64)
        table[np.asarray(self.classes, dtype=np.int64)] = np.arange(len(self.classes))
        return table

    def annotated_classes(self) -> np.ndarray:
        """Bool mask over this subset's classes: those its stored labels name (before any
        hierarchy closure): the label space an eval set is annotated in. Reads the labels
        column of manifest.parquet (rows up to ``max_rank``)."""
        import pyarrow.parquet as pq

        table = pq.read_table(self.path / "manifest.parquet", columns=["labels", "rank"])
        labels = table.column("labels").to_pylist()
        ranks = table.column("rank").to_numpy()
        ids = np.unique(np.asarray([i for row, r in zip(labels, ranks) if r < self.max_rank for i in row],
                                   dtype=np.int64))
        table_map = self.label_map()
        if table_map is not None:
            ids = table_map[ids]
            ids = ids[ids >= 0]
        mask = np.zeros(self.num_classes, dtype=bool)
        mask[ids] = True
        return mask

    def iter_samples(self, skipped=None, verify_images: bool = False) -> Iterator[ShardSample]:
        """Stream the subset's samples in rank order (corrupt ones skipped and counted).

        For a class-restricted subset ``meta["labels"]`` holds subset class
        ids and ``meta["source_labels"]`` the stored ones; images without a
        kept label are not part of the subset and are not yielded.
        """
        import collections
        skipped = collections.Counter() if skipped is None else skipped
        table = self.label_map()
        for entry, path in zip(self.shards, self.shard_paths()):
            max_rank = self.max_rank if entry.filter else None
            for sample in iter_shard_samples([path], max_rank=max_rank, skipped=skipped,
                                             verify_images=verify_images):
                if table is not None:
                    labels = subset_labels(sample.meta.get("labels", []), table)
                    if not labels and not self.keep_unlabelled:
                        continue
                    sample.meta["source_labels"] = sample.meta["labels"]
                    sample.meta["labels"] = labels
                yield sample

    def to_json(self) -> dict:
        return {"name": self.name, "images": self.images, "fraction": self.fraction,
                "max_rank": self.max_rank, "salt": self.salt,
                "shards_root": str(self.shards_root),
                "shards": [vars(e) for e in self.shards], "classes": self.classes}


def subset_labels(labels: list, table: np.ndarray) -> list[int]:
    """Stored label ids mapped through a subset's label map, dropped ones removed."""
    out = []
    for label in labels:
        if isinstance(label, int) and 0 <= label < len(table) and table[label] >= 0:
            out.append(int(table[label]))
    return sorted(set(out))


def restricted_vocabulary(vocab: Vocabulary, classes: list[int] | None) -> Vocabulary:
    """The kept classes renumbered 0..K-1; a parent is the nearest kept ancestor."""
    if classes is None:
        return vocab
    new_id = {old: new for new, old in enumerate(classes)}
    parents = [next((new_id[a] for a in vocab.ancestors(old) if a in new_id), None)
               for old in classes]
    extra = [{**vocab.extra[old], "source_id": old} for old in classes]
    return Vocabulary([vocab.names[old] for old in classes], parents, extra)


def shards_salt(shards_dir: Path) -> str:
    """The salt a shards folder was written with (from its lineage record)."""
    record = read_config_record(shards_dir) or {}
    return str((record.get("config") or {}).get("salt", "datascale"))


def full_subset(shards_dir: str | Path) -> Subset:
    """A whole shards folder as the subset ``all`` (every shard, no filter)."""
    root = Path(shards_dir).resolve()
    sizes_file = root / "sizes.json"
    if not sizes_file.is_file():
        raise DataError(f"{root}: not a shards folder (no sizes.json); "
                        "run `datascale shards write` first")
    sizes = json.loads(sizes_file.read_text(encoding="utf-8"))
    entries = [ShardEntry(name, int(n), False) for name, n in sorted(sizes.items())]
    return Subset("all", sum(e.samples for e in entries), 1.0, shards_salt(root), root, entries)


def load_subset(path: str | Path) -> Subset:
    """Load a subset folder (``subset.json``) or treat a shards folder as the full subset."""
    root = Path(path)
    file = root / SUBSET_FILE if root.is_dir() else root
    if file.name != SUBSET_FILE or not file.is_file():
        if root.is_dir() and (root / "sizes.json").is_file():
            return full_subset(root)
        raise DataError(f"{path}: neither a subset folder (subset.json) nor a shards folder "
                        "(sizes.json)")
    data = json.loads(file.read_text(encoding="utf-8"))
    try:
        shards_root = Path(data["shards_root"])
        if not shards_root.is_absolute():
            shards_root = (file.parent / shards_root).resolve()
        return Subset(data["name"], int(data["images"]), float(data["max_rank"]), data["salt"],
                      shards_root, [ShardEntry(**e) for e in data["shards"]],
                      data.get("classes"), float(data.get("fraction", 1.0)), file.parent)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{file}: malformed subset.json ({exc})") from None


def as_subset(source: Any) -> Subset:
    """A Subset from a Subset, a subset folder or a shards folder."""
    return source if isinstance(source, Subset) else load_subset(source)


# --------------------------------------------------------------------------- sizes


def _parse_size(text: str) -> tuple[str, float]:
    """("count" | "fraction", value) of one size: ``all``, ``120``, ``10M``, ``1.5K`` or ``0.5``."""
    t = text.strip().upper()
    if t == "ALL":
        return "fraction", 1.0
    unit = _UNITS.get(t[-1:], None)
    try:
        number = float(t[:-1] if unit else t)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise DataError(f"subset size {text!r} is not a size: give a count (120, 10M), a fraction "
                        "in (0, 1] (0.5) or 'all'")
    value = number * (unit or 1)
    if unit is None and any(c in t for c in ".E"):
        if value > 1:
            raise DataError(f"subset size {text!r}: a fraction must be in (0, 1] and a count must be "
                            "an integer; give 0.5 for half the images or 150 for 150 images")
        return "fraction", value
    if value != int(value):
        raise DataError(f"subset size {text!r} is {value:g} images; a count must be an integer")
    return "count", value


def parse_sizes(sizes: list[str], total: int | None = None) -> tuple[bool, list]:
    """(are_fractions, values) of subset sizes: counts ``10M``/``400``, fractions ``0.1``, ``all``.

    A size with a decimal point and no unit is a fraction, which must be in
    (0, 1]; a count must be a whole number (``1.5`` is an error, not 2
    images); NaN and infinities are errors. ``1`` among fractions is the
    fraction 1. Counts and fractions cannot be mixed, except ``all``, which is
    the whole collection (``total`` images) among counts.
    """
    parsed = [_parse_size(str(s)) for s in sizes]
    texts = [str(s).strip().upper() for s in sizes]
    kinds = {kind for (kind, _), t in zip(parsed, texts) if t != "ALL"}
    if "fraction" in kinds and any(kind == "count" and value > 1 for kind, value in parsed):
        raise DataError(f"subset sizes {', '.join(map(str, sizes))} mix counts and fractions; "
                        "give all as counts (10M, 400) or all as fractions (0.1, 1)")
    if "fraction" in kinds or not kinds:  # only "all" is the fraction 1
        return True, [value for _, value in parsed]
    counts = []
    for (kind, value), text in zip(parsed, texts):
        if text == "ALL":
            if total is None:
                raise DataError("subset size 'all' among counts needs the collection size")
            value = total
        counts.append(int(value))
    return False, counts


def size_name(count: int) -> str:
    """A short subset name from its image count: 10000000 -> '10M', 1200 -> '1200'."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale and count % scale == 0:
            return f"{count // scale}{unit}"
    return str(count)


def resolve_classes(cfg: SubsetsConfig, vocab: Vocabulary, class_counts) -> list[int] | None:
    """Sorted kept class ids from names/ids or the top-K most frequent (ties: lower id)."""
    if cfg.classes:
        return sorted({vocab.id_of(int(c) if str(c).isdigit() else c) for c in cfg.classes})
    if cfg.top_classes:
        if cfg.top_classes > len(vocab):
            raise DataError(f"top_classes={cfg.top_classes} but there are only {len(vocab)} classes")
        order = np.lexsort((np.arange(len(class_counts)), -np.asarray(class_counts)))
        return sorted(int(c) for c in order[: cfg.top_classes])
    return None
