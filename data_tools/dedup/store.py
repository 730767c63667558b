"""The vector store: float16 ``.npy`` blocks on disk, memory-mapped, one block per pool shard.

Layout (``INDEX/vectors/``)::

    block-000042.keys.parquet    column ``key``: the pool keys of the block's rows, in order
    block-000042.skipped.json    {"counts": {reason: n}, "items": ["shard:key: reason", ...]}
    block-000042.view1.npy       float16 (rows, dim): pool view 1 of the same rows (one file per
                                 extra view of ``embedder.pool_views``; absent with one view)
    block-000042.npy             float16 (rows, dim), unit rows; written last = the block is done

Vector ids are global row numbers: block order, then row order. The store
never loads all vectors or all keys: vectors are gathered from memory maps
and keys are read per block on demand, so it works for 300M rows.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datascale.atomic import atomic_path, write_json
from datascale.errors import DataError

VECTORS_DIR = "vectors"
_BLOCK_RE = re.compile(r"^block-(\d{6,})\.npy$")


def block_stem(index: int) -> str:
    """File stem of block ``index``: ``block-000042``."""
    return f"block-{index:06d}"


def block_done(root: Path, index: int) -> bool:
    """True when block ``index`` was written completely (its .npy exists)."""
    return (Path(root) / f"{block_stem(index)}.npy").is_file()


def write_block(root: Path, index: int, keys: list[str], vectors: np.ndarray,
                skipped: dict) -> None:
    """Write one block: keys, skipped list, then the vectors (the done marker), each atomically.

    ``vectors``: (len(keys), dim) unit rows, or (len(keys), V, dim) for V pool
    views (view 0 in ``.npy``, view j in ``.viewJ.npy``, written first);
    stored as float16 (cosine error below 1e-3, half the disk of float32).
    """
    root = Path(root)
    vectors = vectors[:, None] if vectors.ndim == 2 else vectors
    if len(keys) != len(vectors):
        raise ValueError(f"block {index}: {len(keys)} keys but {len(vectors)} vectors")
    stem = block_stem(index)
    with atomic_path(root / f"{stem}.keys.parquet") as tmp:
        pq.write_table(pa.table({"key": pa.array(keys, pa.string())}), tmp)
    write_json(root / f"{stem}.skipped.json", skipped)
    for view in [*range(1, vectors.shape[1]), 0]:
        name = f"{stem}.npy" if view == 0 else f"{stem}.view{view}.npy"
        with atomic_path(root / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(vectors[:, view], dtype=np.float16))


class VectorStore:
    """Read access to finished blocks: ids -> vectors, ids -> keys, keys -> ids.

    ``expected_blocks``: the pool's shard count; a store missing some of them
    raises DataError listing them (an embedding step has not finished).
    Memory: one memory map per block (pages loaded on access) plus the keys
    of the few most recently used blocks.
    """

    def __init__(self, root: str | Path, expected_blocks: int | None = None) -> None:
        self.root = Path(root)
        found = sorted(int(m.group(1)) for p in self.root.glob("block-*.npy")
                       if (m := _BLOCK_RE.match(p.name)))
        if expected_blocks is not None:
            missing = sorted(set(range(expected_blocks)) - set(found))
            if missing:
                shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
                raise DataError(f"{self.root}: {len(missing)} of {expected_blocks} blocks are not "
                                f"embedded yet (blocks {shown}); finish `--step embed` on every rank")
            found = list(range(expected_blocks))
        if not found:
            raise DataError(f"{self.root}: no embedded blocks; run `datascale dedup index` first")
        self.blocks = found
        shapes = [self._map(b).shape for b in found]
        dims = {s[1] for s in shapes if s[0]} or {shapes[0][1]}
        if len(dims) != 1:
            raise DataError(f"{self.root}: blocks of different dimensions {sorted(dims)}; rebuild")
        self.dim = dims.pop()
        self.offsets = np.concatenate([[0], np.cumsum([s[0] for s in shapes])]).astype(np.int64)
        self.ntotal = int(self.offsets[-1])   # pool images (rows); the index holds ntotal x views
        self.views = 1 + sum(1 for _ in self.root.glob(f"{block_stem(found[0])}.view*.npy"))

    @functools.lru_cache(maxsize=4096)
    def _map(self, block: int, view: int = 0) -> np.ndarray:
        suffix = "" if view == 0 else f".view{view}"
        return np.load(self.root / f"{block_stem(block)}{suffix}.npy", mmap_mode="r")

    @functools.lru_cache(maxsize=64)
    def _keys(self, block: int) -> np.ndarray:
        return pq.read_table(self.root / f"{block_stem(block)}.keys.parquet").column("key") \
            .to_numpy(zero_copy_only=False)

    def block_range(self, position: int) -> tuple[int, int]:
        """(first id, end id) of the block at list position ``position``."""
        return int(self.offsets[position]), int(self.offsets[position + 1])

    def block_vectors(self, position: int, view: int = 0) -> np.ndarray:
        """The memory-mapped float16 rows (pool view ``view``) of the block at list position ``position``."""
        return self._map(self.blocks[position], view)

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.ntotal):
            raise IndexError(f"vector ids outside 0..{self.ntotal - 1}")
        pos = np.searchsorted(self.offsets, ids, side="right") - 1
        return pos, ids - self.offsets[pos]

    def _groups(self, ids: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(block position, indices into ids, rows in that block), one group per block touched.

        Sorting once keeps this O(n log n) however many of the (up to 30,000) blocks are hit.
        """
        pos, rows = self._locate(ids)
        order = np.argsort(pos, kind="stable")
        starts = np.flatnonzero(np.diff(pos[order], prepend=-1))
        for lo, hi in zip(starts, [*starts[1:], len(order)]):
            where = order[lo:hi]
            yield int(pos[where[0]]), where, rows[where]

    def vectors(self, ids: np.ndarray, view: int = 0) -> np.ndarray:
        """float32 (len(ids), dim) rows of pool view ``view`` for global ids (any order, repeats allowed)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for position, where, rows in self._groups(ids):
            out[where] = self.block_vectors(position, view)[rows]
        return out

    def all_views(self, ids: np.ndarray) -> np.ndarray:
        """float32 (len(ids), views, dim): every stored pool view of each id."""
        return np.stack([self.vectors(ids, view) for view in range(self.views)], axis=1)

    def keys(self, ids: np.ndarray) -> list[str]:
        """Pool keys of global ids, in the given order."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        out = np.empty(len(ids), dtype=object)
        for position, where, rows in self._groups(ids):
            out[where] = self._keys(self.blocks[position])[rows]
        return [str(k) for k in out]

    def shard_of(self, ids: np.ndarray) -> list[int]:
        """The pool shard number (= block number) of each global id."""
        pos, _ = self._locate(ids)
        return [self.blocks[int(p)] for p in pos]

    def find_keys(self, keys: set[str]) -> dict[str, int]:
        """Global ids of the given keys that are in the store (a scan of every block's keys).

        Time: reads all key files once (seconds per 10M keys); memory: one block of keys.
        """
        wanted = np.array(sorted(keys), dtype=object)
        found: dict[str, int] = {}
        for position, block in enumerate(self.blocks):
            column = pq.read_table(self.root / f"{block_stem(block)}.keys.parquet").column("key")
            block_keys = column.to_numpy(zero_copy_only=False)
            hits = np.nonzero(np.isin(block_keys, wanted))[0]
            for row in hits:
                found[str(block_keys[row])] = int(self.offsets[position] + row)
        return found

    def iter_chunks(self, positions: list[int], rows: int = 65536,
                    view: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64, float32 vectors of pool view ``view``) chunks of the blocks at ``positions``."""
        for p in positions:
            start, _ = self.block_range(p)
            data = self.block_vectors(p, view)
            for lo in range(0, len(data), rows):
                chunk = np.asarray(data[lo:lo + rows], dtype=np.float32)
                yield np.arange(start + lo, start + lo + len(chunk), dtype=np.int64), chunk

    def sample(self, count: int, seed: int) -> np.ndarray:
        """float32 vectors of ``count`` distinct random ids (all of them if fewer)."""
        rng = np.random.default_rng(seed)
        if count >= self.ntotal:
            ids = np.arange(self.ntotal)
        else:
            ids = np.sort(rng.choice(self.ntotal, size=count, replace=False))
        return self.vectors(ids)

    def skipped(self) -> dict:
        """Pool images that could not be embedded: counts by reason and the items, over all blocks."""
        counts: dict[str, int] = {}
        items: list[str] = []
        for block in self.blocks:
            path = self.root / f"{block_stem(block)}.skipped.json"
            if path.is_file():
                data = json.loads(path.read_text(encoding="utf-8"))
                for reason, n in data.get("counts", {}).items():
                    counts[reason] = counts.get(reason, 0) + int(n)
                items.extend(data.get("items", []))
        return {"counts": counts, "items": items}
