"""Embedding the pool into the vector store: by shard, split across ranks, restartable.

Rank ``r`` of ``w`` embeds the shards ``i`` with ``i % w == r`` (the DeepSpeed
launcher sets ``RANK``/``WORLD_SIZE``; see :func:`datascale.launch.rank_from_env`). A shard's
block is written atomically when the shard is finished, so an interrupted run
loses at most the shard in progress and a rerun skips every finished block.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from datascale.atomic import append_jsonl
from datascale.errors import DataError
from data_tools.dedup.embedders import Embedder
from data_tools.dedup.prepare import PreparePool, embed_prepared
from data_tools.dedup.pool import Pool
from data_tools.dedup.store import block_done, write_block

log = logging.getLogger(__name__)


def _samples(pool: Pool, shard: int, skipped: collections.Counter) -> Iterator[tuple[str, bytes]]:
    for sample in pool.iter_shard(shard, skipped):
        yield sample.key, sample.image


def embed_shard(pool: Pool, shard: int, embedder: Embedder, prepare: PreparePool,
                batch_size: int, progress=None) -> tuple[list[str], np.ndarray, dict]:
    """Embed one pool shard: (keys, (n, dim) float32 unit vectors, skipped record).

    Undecodable images and damaged tar members are counted by reason and
    listed as ``shard:key: reason``; they get no vector. The vectors are (n, V, dim)
    for the V views ``prepare`` was built with. Memory: one shard's vectors.
    """
    skipped: collections.Counter = collections.Counter()
    keys: list[str] = []
    chunks: list[np.ndarray] = []
    items: list[str] = []
    name = pool.shard_name(shard)
    for batch in embed_prepared(embedder, prepare.map(_samples(pool, shard, skipped)), batch_size):
        keys.extend(batch.ids)
        chunks.append(batch.vectors)
        for key, reason in batch.failures:
            skipped["undecodable_image"] += 1
            items.append(f"{name}:{key}: {reason}")
        if progress is not None:
            progress.update(len(batch.ids) + len(batch.failures))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 1, embedder.dim), np.float32)
    if len(set(keys)) != len(keys):
        dup = collections.Counter(keys).most_common(1)[0][0]
        raise DataError(f"{name}: key {dup!r} appears twice in one shard; re-write the shards")
    return keys, vectors, {"counts": dict(skipped), "items": items}


def embed_pool(pool: Pool, store_dir: Path, embedder: Embedder, *, rank: int = 0,
               world_size: int = 1, batch_size: int = 256, workers: int = 0, views: list | None = None,
               metrics_path: Path | None = None, progress: bool = True) -> dict:
    """Embed this rank's unfinished shards of ``pool`` into blocks under ``store_dir``.

    Returns ``{"blocks_done", "blocks_embedded", "images", "skipped"}`` for this
    call. ``views``: the pool views (views.View; None: identity only), each
    stored. Time: one decode + one embedding per view of every image of this
    rank's shards; memory: one shard's vectors plus one window of encoded
    images per worker.
    """
    from tqdm import tqdm
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    mine = list(range(rank, pool.num_shards, world_size))
    todo = [i for i in mine if not block_done(store_dir, i)]
    log.info("rank %d/%d: %d of its %d pool shards to embed (%d already done)",
             rank, world_size, len(todo), len(mine), len(mine) - len(todo))
    stats = {"blocks_done": len(mine) - len(todo), "blocks_embedded": 0, "images": 0,
             "skipped": collections.Counter()}
    total = sum(pool.shard_samples(i) for i in todo)
    with PreparePool(embedder, views, workers=workers) as prepare, \
            tqdm(total=total, unit="img", desc=f"embed pool (rank {rank})", disable=not progress) as bar:
        for shard in todo:
            started = time.perf_counter()
            keys, vectors, skipped = embed_shard(pool, shard, embedder, prepare, batch_size, bar)
            write_block(store_dir, shard, keys, vectors, skipped)
            seconds = time.perf_counter() - started
            stats["blocks_embedded"] += 1
            stats["images"] += len(keys)
            stats["skipped"].update(skipped["counts"])
            if metrics_path is not None:
                append_jsonl(metrics_path, {"step": "embed", "rank": rank, "block": shard,
                                            "images": len(keys), "skipped": sum(skipped["counts"].values()),
                                            "seconds": round(seconds, 3),
                                            "images_per_s": round(len(keys) / max(seconds, 1e-9), 1)})
    stats["skipped"] = dict(stats["skipped"])
    return stats


def fit_embedder_state(pool: Pool, embedder: Embedder, state_path: Path, *, images: int,
                       batch_size: int, workers: int) -> None:
    """Fit the embedder's pool-dependent state (e.g. PCA) on the first ``images`` pool images.

    Shards are in hash-rank order, so the first shards are a uniform random
    sample of the pool. Writes ``state_path`` atomically.
    """
    def prepared_batches() -> Iterator[np.ndarray]:
        seen, arrays = 0, []
        with PreparePool(embedder, workers=workers) as prepare:
            for shard in range(pool.num_shards):
                for _, array, error in prepare.map(_samples(pool, shard, collections.Counter())):
                    if error is None:
                        arrays.append(array[0])
                        seen += 1
                    if len(arrays) == batch_size or (seen >= images and arrays):
                        yield np.stack(arrays)
                        arrays = []
                    if seen >= images:
                        return
            if arrays:
                yield np.stack(arrays)

    log.info("fitting %s state on the first %d pool images", embedder.name, images)
    embedder.fit(prepared_batches())
    embedder.save_state(state_path)
