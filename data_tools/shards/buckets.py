"""A bucketed external shuffle by hash rank: any input order in, rank order out, bounded memory.

Pass 1 appends every record (metadata only: key, labels, image reference,
~200 bytes) to one of ``TOP_BUCKETS`` files chosen by its rank range. A bucket
that holds more than ``bucket_records`` records is split into finer rank
ranges, recursively, so that no bucket exceeds the cap. Consecutive buckets
are then packed into groups of at most ``bucket_records`` records; each group
is sorted in memory and becomes a run of consecutive shards. Because the
buckets are rank ranges, concatenating the sorted groups gives the global
rank order, and groups can be written in parallel, on one machine or many
(each rank buckets its slice of the input into its own files; the split is
decided by the counts summed over the ranks: :func:`settle_buckets`).

Memory contract: at most ``bucket_records`` records are held in memory by
one process at any time (plus one line while splitting), whatever the input
size; disk: the metadata once more in ``.work/w{WORLD_SIZE}/buckets``.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from datascale.errors import DataError

TOP_BUCKETS = 64
SPLIT_FANOUT = 16
# Below this rank-range width every record in a bucket shares (almost) one
# rank, i.e. one key repeated: splitting further cannot help.
_MIN_WIDTH = 2.0 ** -40

# A record as stored: [rank, key, labels, true_labels, source, ref, ext, input_index, kept]
# (kept: the caption/url/sha256 dict of a tar or files sample, or None)
RANK, KEY, LABELS, TRUE, SOURCE, REF, EXT, INDEX, KEPT = range(9)


@dataclass
class Bucket:
    """One bucket file: records with lo <= rank < hi."""

    path: str
    lo: float
    hi: float
    count: int = 0


@dataclass
class BucketWriter:
    """Pass 1: append records to the top-level rank-range bucket files."""

    folder: Path
    buckets: list[Bucket] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        width = 1.0 / TOP_BUCKETS
        self.buckets = [Bucket(str(self.folder / f"b{i:03d}.jsonl"), i * width, (i + 1) * width)
                        for i in range(TOP_BUCKETS)]
        self._handles = [open(b.path, "w", encoding="utf-8") for b in self.buckets]

    def add(self, record: list) -> None:
        index = min(int(record[RANK] * TOP_BUCKETS), TOP_BUCKETS - 1)
        self._handles[index].write(json.dumps(record, separators=(",", ":")) + "\n")
        self.buckets[index].count += 1

    def close(self) -> list[Bucket]:
        for handle in self._handles:
            handle.close()
        return self.buckets


def bucket_name(bucket: Bucket) -> str:
    """The bucket's name, its file name without ``.jsonl`` (``b003_04``): the same on every rank."""
    return Path(bucket.path).stem


def split_bucket(bucket: Bucket, total: int | None = None) -> list[Bucket]:
    """Split ``bucket`` once into ``SPLIT_FANOUT`` finer rank ranges; the children, in rank order.

    Streams the bucket file line by line (constant memory); the parent file is
    removed once its children are written. ``total``: the records of this rank
    range over all ranks (default: this file's), for the error when one key
    fills the range. Every child file is written, even an empty one, so that
    all ranks hold the same bucket names.
    """
    width = (bucket.hi - bucket.lo) / SPLIT_FANOUT
    if width < _MIN_WIDTH:
        raise DataError(f"{bucket.count if total is None else total} records share one hash rank: "
                        "one key is repeated that often in the input; remove the duplicates or "
                        "raise bucket_records")
    stem = bucket.path[: -len(".jsonl")]
    children = [Bucket(f"{stem}_{i:02d}.jsonl", bucket.lo + i * width, bucket.lo + (i + 1) * width)
                for i in range(SPLIT_FANOUT)]
    children[-1].hi = bucket.hi
    handles = [open(c.path, "w", encoding="utf-8") for c in children]
    with open(bucket.path, encoding="utf-8") as source:
        for line in source:
            rank = float(line[1: line.index(",")])
            index = min(max(int((rank - bucket.lo) / width), 0), SPLIT_FANOUT - 1)
            handles[index].write(line)
            children[index].count += 1
    for handle in handles:
        handle.close()
    os.remove(bucket.path)
    return children


def settle_buckets(buckets: list[Bucket], cap: int, exchange=None) -> tuple[list[Bucket], dict]:
    """Split buckets until none holds more than ``cap`` records; (leaf buckets, total per name).

    One level per round, breadth first: the leaves are those of splitting each
    bucket recursively. With ``exchange`` (``exchange(step, {name: count})`` ->
    every rank's counts, see :mod:`data_tools.shards.distributed`) the split is
    decided by the counts summed over all ranks, so every rank splits its own
    files exactly as one machine would split the union of them; the returned
    buckets keep this rank's counts, the totals are global.
    """
    for level in itertools.count():
        counts = {bucket_name(b): b.count for b in buckets}
        totals = dict(counts)
        if exchange is not None:
            totals = collections.Counter()
            for part in exchange(f"counts-{level}", counts):
                totals.update(part)
        if all(totals[bucket_name(b)] <= cap for b in buckets):
            return buckets, {name: totals[name] for name in counts}
        buckets = [child for b in buckets for child in (
            split_bucket(b, totals[bucket_name(b)]) if totals[bucket_name(b)] > cap else [b])]
    raise AssertionError("unreachable")


def plan_groups(buckets: list[Bucket], cap: int, samples_per_shard: int) -> list[dict]:
    """Pack consecutive buckets into groups of at most ``cap`` records and number their shards.

    Returns ``[{"buckets": [paths], "records": n, "first_shard": i, "shards": k}]``;
    the plan depends only on the bucket counts, so a resumed run gets the
    same shard names. Empty buckets are dropped.
    """
    groups: list[dict] = []
    current: list[Bucket] = []
    for bucket in buckets:
        if bucket.count == 0:
            continue
        if current and sum(b.count for b in current) + bucket.count > cap:
            groups.append(_group(current))
            current = []
        current.append(bucket)
    if current:
        groups.append(_group(current))
    first = 0
    for group in groups:
        group["shards"] = max(1, math.ceil(group["records"] / samples_per_shard))
        group["first_shard"] = first
        first += group["shards"]
    return groups


def _group(buckets: list[Bucket]) -> dict:
    return {"buckets": [b.path for b in buckets], "records": sum(b.count for b in buckets)}


def load_group(paths: list[str]) -> list[list]:
    """The records of a group's buckets, sorted by (rank, key, input order)."""
    records: list[list] = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            records.extend(json.loads(line) for line in handle)
    records.sort(key=lambda r: (r[RANK], r[KEY], r[INDEX]))
    return records


def drop_duplicate_keys(records: list[list]) -> tuple[list[list], list[list]]:
    """(kept, duplicates): of records sharing a key, the first in input order is kept.

    Equal keys have equal ranks, so after sorting they are adjacent.
    """
    kept: list[list] = []
    dups: list[list] = []
    for record in records:
        if kept and kept[-1][KEY] == record[KEY]:
            dups.append(record)
        else:
            kept.append(record)
    return kept, dups


def split_evenly(records: list, parts: int) -> list[list]:
    """``records`` cut into ``parts`` consecutive runs whose sizes differ by at most one."""
    size, extra = divmod(len(records), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(records[start:end])
        start = end
    return out
