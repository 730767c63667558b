"""The pretraining pool: a subset folder or a whole shards folder, read shard by shard.

Dedup treats each shard of the pool as one block of vectors (block ``i`` =
shard ``i`` of the subset's shard list), so ranks split the work by shard,
restarts skip finished shards, and a vector's pool image is found again by
scanning one shard.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from datascale.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Pool:
    """A pool of pretraining images (``data_tools.subsets.subset.Subset``) addressed by shard number."""

    path: Path
    subset: object  # data_tools.subsets.subset.Subset (imported lazily)

    @property
    def num_shards(self) -> int:
        return len(self.subset.shards)

    @property
    def images(self) -> int:
        """Images the subset says it holds (before undecodable ones are skipped)."""
        return int(self.subset.images)

    def shard_samples(self, index: int) -> int:
        return int(self.subset.shards[index].samples)

    def shard_name(self, index: int) -> str:
        return str(self.subset.shards[index].path)

    def iter_shard(self, index: int, skipped: collections.Counter) -> Iterator:
        """ShardSamples of shard ``index`` that belong to the pool (rank and class filters applied).

        Damaged members are counted in ``skipped`` by reason. Memory: one sample.
        """
        one = dataclasses.replace(self.subset, shards=[self.subset.shards[index]])
        return one.iter_samples(skipped=skipped)

    def pin_file(self) -> Path:
        """The small file whose hash pins the pool's content (for lineage)."""
        folder = getattr(self.subset, "folder", None)
        for candidate in ([folder / "manifest.parquet", folder / "subset.json"] if folder else []) + \
                [self.subset.shards_root / "manifest.parquet", self.subset.shards_root / "sizes.json"]:
            if candidate.is_file():
                return candidate
        raise DataError(f"{self.path}: no manifest.parquet, subset.json or sizes.json to pin the pool")

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "name": self.subset.name,
                "images": self.images, "shards": self.num_shards,
                "shards_root": str(self.subset.shards_root)}

    def fetch(self, wanted: dict[int, set[str]]) -> dict[str, bytes]:
        """Encoded bytes of pool images, given ``{shard number: {keys}}``.

        Reads each named shard once, sequentially (a few shards for a gallery).
        Keys not found (a changed pool) are simply absent from the result.
        """
        found: dict[str, bytes] = {}
        for index, keys in sorted(wanted.items()):
            if not 0 <= index < self.num_shards:
                continue
            remaining = set(keys)
            for sample in self.iter_shard(index, collections.Counter()):
                if sample.key in remaining:
                    found[sample.key] = sample.image
                    remaining.discard(sample.key)
                    if not remaining:
                        break
        return found


def open_pool(path: str | Path) -> Pool:
    """Open a pool: a subset folder (``subset.json``) or a shards folder (``sizes.json``).

    Raises DataError saying what a pool must look like when ``path`` is neither.
    """
    from data_tools.subsets.subset import load_subset
    path = Path(path)
    if not path.exists():
        raise DataError(f"pool not found: {path}; give a subset folder or a shards folder")
    subset = load_subset(path)
    if not subset.shards:
        raise DataError(f"{path}: the pool has no shards")
    return Pool(path, subset)

