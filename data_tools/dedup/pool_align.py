"""Pool-side crop alignment: is the test image a crop of its borderline pool neighbour?

align.py searches crops of the *test* image, which finds a pool copy showing
part of the test image. The opposite case, a test image that is a crop of a
larger pool photo, cannot be searched from the test side (the test image
lacks what was cut away) and the pool image's stored vectors are of the
whole image and its centre crop only (``embedder.pool_views``). So for each
test image's best ``cfg.pool_pairs`` neighbours still scoring in
``[cfg.pool_min_score, cfg.skip_above)``, the pool image's pixels are read back
and its crops are scored against the test image's own vector, with the same
grid + pattern search as align.py.

Cost: the pool shards holding those neighbours are read (each once per
chunk of test images, up to the last wanted key), plus ~150 embeddings per
pair. Pool images that cannot be read (a moved pool) are counted; their
pairs keep their scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from datascale.errors import DataError
from data_tools.dedup.align import Aligner, Box


@dataclass(frozen=True)
class PoolBox:
    """The crop of the pool image that matched the test image (names the view in duplicates.parquet)."""

    box: Box
    mirrored: bool = False

    @property
    def name(self) -> str:
        return ("mirror+" if self.mirrored else "") + "pool-" + self.box.name


def _todo(found, cfg) -> np.ndarray:
    todo = (found.ids >= 0) & (found.scores >= cfg.pool_min_score) & (found.scores < cfg.skip_above)
    return todo & (np.cumsum(todo, axis=1) <= cfg.pool_pairs)


def align_pool_side(found, test_vectors: np.ndarray, index, views: list, cfg, *,
                    chunk: int = 256, progress: bool = True) -> tuple[dict, dict]:
    """Raise ``found``'s scores to the best crop of each borderline pool image; (raised, stats).

    ``test_vectors``: (n, dim) the test images' identity vectors; ``index``: the
    audit's LoadedIndex (pool path, store); ``views``: the query view of each
    ``found.views`` entry (a mirrored match is aligned on the mirrored pool
    image). Memory: the pool images of one chunk of ``chunk`` test images.
    """
    from data_tools.dedup.pool import open_pool
    from data_tools.dedup.prepare import ImageDecodeError, decode_image
    started = time.perf_counter()
    todo = _todo(found, cfg)
    rows = np.flatnonzero(todo.any(axis=1))
    stats = {"pairs_aligned": 0, "pairs_raised": 0, "pool_images_unreadable": 0, "shards_read": 0}
    if not len(rows):
        return {}, {**stats, "seconds": round(time.perf_counter() - started, 2)}
    try:
        pool = open_pool(index.meta["pool"]["path"])
    except DataError as exc:
        return {}, {**stats, "pool_images_unreadable": int(todo.sum()), "note": str(exc), "seconds": 0.0}
    aligner = Aligner(index.embedder, cfg)
    raised: dict = {}
    for lo in tqdm(range(0, len(rows), chunk), desc="align pool side", disable=not progress):
        part = rows[lo:lo + chunk]
        ids = np.unique(found.ids[part][todo[part]])
        wanted: dict[int, set[str]] = {}
        for key, shard in zip(index.store.keys(ids), index.store.shard_of(ids)):
            wanted.setdefault(shard, set()).add(key)
        images = pool.fetch(wanted)
        stats["shards_read"] += len(wanted)
        keys = dict(zip(ids.tolist(), index.store.keys(ids)))
        for row in part:
            for c in np.flatnonzero(todo[row]):
                pool_id = int(found.ids[row, c])
                data = images.get(keys[pool_id])
                try:
                    image = decode_image(data, round(aligner.side / cfg.min_crop)) if data else None
                except (OSError, ImageDecodeError):
                    image = None
                if image is None:
                    stats["pool_images_unreadable"] += 1
                    continue
                # A match through the mirror view may be a look-alike of the unmirrored
                # image (measured: a coffee-cup crop), so both orientations are tried then.
                mirrored = views[found.views[row, c]].kind == "mirror"
                for flip in (False, True) if mirrored else (False,):
                    score, box = aligner.align(image, test_vectors[row:row + 1], flip)
                    stats["pairs_aligned"] += 1
                    if score[0] > found.scores[row, c]:
                        before = raised.get((int(row), pool_id), (float(found.scores[row, c]),))[0]
                        raised[(int(row), pool_id)] = (before, PoolBox(box[0], flip))
                        found.scores[row, c] = score[0]
            order = np.argsort(-found.scores[row], kind="stable")
            for array in (found.ids, found.scores, found.views):
                array[row] = array[row][order]
    stats["pairs_raised"] = len(raised)
    stats["seconds"] = round(time.perf_counter() - started, 2)
    return raised, stats
