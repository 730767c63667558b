"""FAISS index of the pool: planned from its size and a memory budget, built in parts, merged on disk.

* Small pools (``index.flat_max_vectors``, and fitting in ``max_memory``)
  get an exact ``IndexFlatIP`` (vectors are unit, so inner product = cosine).
* Larger pools get IVF-PQ (optionally OPQ-rotated): ``nlist`` ~
  ``lists_per_sqrt * sqrt(N)`` (a power of two, an HNSW coarse quantizer from
  65,536 lists), and the largest PQ code size that divides the dimension,
  is at most ``max_code_bytes`` and fits ``max_memory`` with 8-byte ids.
* Parts: each adds its blocks to a copy of the trained empty index and is
  written to its own file; :func:`merge_parts` combines the parts'
  inverted lists into one ``index.ivfdata`` file on disk with
  ``faiss.contrib.ondisk.merge_ondisk`` (the lists are memory-mapped, never
  all in RAM), so many machines can build one index.
* Search: the compressed index proposes candidates; every candidate is
  re-scored with the exact cosine of its stored float16 vector before any
  threshold is applied (:func:`search_rescored`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk
from tqdm import tqdm

from datascale.atomic import atomic_path
from datascale.errors import ConfigError, DataError
from data_tools.dedup.schema import IndexConfig, parse_bytes
from data_tools.dedup.store import VectorStore

log = logging.getLogger(__name__)

TRAINED_FILE = "trained.index"
INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"
ID_BYTES = 8
MIN_IVFPQ_VECTORS = 1024
HNSW_FROM_LISTS = 65536


@dataclass
class IndexPlan:
    """The index shape chosen for a pool (stored in index.json)."""

    kind: str                 # "flat" or "ivfpq"
    dim: int
    ntotal: int
    factory: str              # faiss.index_factory string
    nlist: int = 0
    pq_bytes: int = 0
    train_points: int = 0
    bytes_per_vector: float = 0.0   # in the index: codes + ids (+ coarse quantizer share)
    parts: int = 1
    nprobe: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexPlan":
        return cls(**data)


def _pq_sizes(dim: int, cap: int) -> list[int]:
    # At least 2 dimensions per sub-quantizer: 1-d sub-vectors waste the byte.
    return sorted((m for m in range(1, dim // 2 + 1) if dim % m == 0 and m <= cap), reverse=True)


def plan_index(ntotal: int, dim: int, cfg: IndexConfig) -> IndexPlan:
    """Choose flat or IVF-PQ, nlist and the PQ code size for ``ntotal`` vectors of ``dim``.

    Raises ConfigError when even the smallest code does not fit
    ``cfg.max_memory``, saying how much memory the pool needs.
    """
    if ntotal < 1:
        raise DataError("the pool has no embedded images; nothing to index")
    budget = parse_bytes(cfg.max_memory)
    parts = max(1, math.ceil(ntotal / cfg.part_vectors))
    flat_bytes = ntotal * (dim * 4)
    # PQ learns 256 centroids per sub-quantizer: below MIN_IVFPQ_VECTORS it cannot be
    # trained, and a flat index of so few vectors is tiny anyway.
    if ntotal < MIN_IVFPQ_VECTORS or (ntotal <= cfg.flat_max_vectors and flat_bytes <= budget):
        return IndexPlan("flat", dim, ntotal, "Flat", bytes_per_vector=dim * 4.0, parts=1)
    lists = min(cfg.lists_per_sqrt * math.sqrt(ntotal), ntotal / cfg.train_points_per_list)
    nlist = 2 ** max(0, int(math.floor(math.log2(max(lists, 1.0)))))
    coarse_bytes = nlist * dim * 4 * (3 if nlist >= HNSW_FROM_LISTS else 1)  # HNSW links ~2x
    per_vector = (budget - coarse_bytes) / ntotal - ID_BYTES
    sizes = [m for m in _pq_sizes(dim, cfg.max_code_bytes) if m <= per_vector]
    if not sizes:
        smallest = min(_pq_sizes(dim, cfg.max_code_bytes) or [dim])
        need = coarse_bytes + ntotal * (smallest + ID_BYTES)
        raise ConfigError(f"index.max_memory {cfg.max_memory} is too small for {ntotal:,} vectors: "
                          f"the smallest index needs {need / 1e9:.2f} GB ({smallest + ID_BYTES} bytes "
                          "per vector); raise --max-memory")
    m = sizes[0]
    quantizer = "_HNSW32" if nlist >= HNSW_FROM_LISTS else ""
    # "np": no polysemous training, which index_factory otherwise switches on
    # and which costs minutes even on a few hundred points (unused here).
    factory = f"{'OPQ%d,' % m if cfg.opq else ''}IVF{nlist}{quantizer},PQ{m}np"
    train = int(min(ntotal, max(nlist * cfg.train_points_per_list, 256 * 40), cfg.max_train_points))
    return IndexPlan("ivfpq", dim, ntotal, factory, nlist=nlist, pq_bytes=m, train_points=train,
                     bytes_per_vector=m + ID_BYTES + coarse_bytes / ntotal, parts=parts,
                     nprobe=min(cfg.nprobe, nlist))


@contextlib.contextmanager
def faiss_threads(work_items: int, small: int = 20_000) -> Iterator[None]:
    """One OpenMP thread for small FAISS jobs, the default otherwise.

    On small k-means or search problems OpenMP's thread start/spin costs
    dominate (measured: PQ training on 300 points took 4 s with 2 threads
    on 2 busy cores, 0.08 s with one).
    """
    previous = faiss.omp_get_max_threads()
    if work_items < small:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _write_index(index, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def train_index(plan: IndexPlan, store: VectorStore, out_dir: Path, seed: int) -> Path:
    """Train the empty IVF-PQ index on a random sample of the store; write ``trained.index``.

    Time: k-means on ``plan.train_points`` vectors (minutes at 300M scale);
    memory: the training sample in float32.
    """
    sample = store.sample(plan.train_points, seed)
    index = faiss.index_factory(plan.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    log.info("training %s on %d vectors", plan.factory, len(sample))
    with faiss_threads(len(sample)):
        index.train(sample)
    path = Path(out_dir) / TRAINED_FILE
    _write_index(index, path)
    return path


def part_blocks(store: VectorStore, part: int, parts: int) -> list[int]:
    """Block positions of build part ``part`` of ``parts``: contiguous, balanced by count."""
    if not 0 <= part < parts:
        raise ConfigError(f"--part {part} is outside 0..{parts - 1}")
    return [int(p) for p in np.array_split(np.arange(len(store.blocks)), parts)[part]]


def add_part(store: VectorStore, out_dir: Path, part: int, parts: int, path: Path,
             progress: bool = True) -> Path:
    """Add part ``part``'s blocks (with their global ids) to a copy of the trained index.

    Writes the part index to ``path`` atomically and returns it. Memory: the
    part's codes (``part_vectors * bytes_per_vector``) plus one chunk.
    """
    index = faiss.read_index(str(Path(out_dir) / TRAINED_FILE))
    positions = part_blocks(store, part, parts)
    total = sum(b - a for a, b in map(store.block_range, positions)) * store.views
    with tqdm(total=total, unit="vec", desc=f"index part {part}/{parts}", disable=not progress) as bar:
        for view in range(store.views):   # every pool view of an image carries the image's id
            for ids, chunk in store.iter_chunks(positions, view=view):
                index.add_with_ids(chunk, ids)
                bar.update(len(ids))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_index(index, Path(path))
    return Path(path)


def merge_parts(out_dir: Path, part_paths: list[Path]) -> Path:
    """Merge part indexes into ``index.faiss`` + ``index.ivfdata`` (inverted lists on disk).

    merge_ondisk memory-maps each part and streams its lists into one
    ivfdata file, so the merged lists never need to fit in RAM; a rerun after
    a crash starts the merge over.
    """
    out_dir = Path(out_dir)
    ivfdata = out_dir / IVFDATA_FILE
    ivfdata.unlink(missing_ok=True)  # a half-merged file from an interrupted run
    index = faiss.read_index(str(out_dir / TRAINED_FILE))
    merge_ondisk(index, [str(p) for p in part_paths], str(ivfdata))
    _write_index(index, out_dir / INDEX_FILE)
    return out_dir / INDEX_FILE


def build_flat(store: VectorStore, out_dir: Path) -> Path:
    """Exact inner-product index of every stored vector; writes index.faiss.

    Pool views are added one after the other, so position p is pool image
    ``p % store.ntotal`` (search_rescored maps it back).
    """
    index = faiss.IndexFlatIP(store.dim)
    for view in range(store.views):
        for _, chunk in store.iter_chunks(list(range(len(store.blocks))), view=view):
            index.add(chunk)
    path = Path(out_dir) / INDEX_FILE
    _write_index(index, path)
    return path


def open_index(out_dir: Path, plan: IndexPlan):
    """Load index.faiss; IVF lists stay on disk (memory-mapped from index.ivfdata beside it)."""
    path = Path(out_dir) / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{out_dir}: no {INDEX_FILE}; the index build has not finished")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if plan.kind == "ivfpq" else 0
    index = faiss.read_index(str(path), flags)
    if index.d != plan.dim or index.ntotal != plan.ntotal:
        raise DataError(f"{path} holds {index.ntotal} vectors of dim {index.d}, index.json says "
                        f"{plan.ntotal} of dim {plan.dim}; rebuild the index")
    return index


@dataclass
class Neighbours:
    """Exact-rescored neighbours: ids, cosine scores and the matching query view, (n, k) each."""

    ids: np.ndarray       # int64, -1 where fewer than k were found
    scores: np.ndarray    # float32, -inf where ids == -1
    views: np.ndarray     # int16 index into the query views


def _rescore(store: VectorStore, cand: np.ndarray, q: np.ndarray, k: int, out: Neighbours, lo: int,
             allowed: np.ndarray | None = None) -> None:
    """Exact cosines of candidate ids ``cand`` (b, C) against views ``q`` (b, V, d) into ``out``.

    With P stored pool views, view index ``p * V + v`` names the pair (pool
    view p, query view v) that scored best; ``allowed`` (P, V) bool masks the
    pairs that may match.
    """
    safe = np.where(cand < 0, 0, cand)
    vecs = store.all_views(safe.ravel()).reshape(len(q), cand.shape[1], store.views, q.shape[2])
    per_view = np.einsum("bcpd,bvd->bcpv", vecs, q)
    if allowed is not None:
        per_view = np.where(allowed[None, None], per_view, -np.inf)
    per_view = per_view.reshape(len(q), cand.shape[1], -1)
    best_view = per_view.argmax(axis=2)
    best = np.take_along_axis(per_view, best_view[..., None], axis=2)[..., 0]
    best[cand < 0] = -np.inf
    for row in range(len(q)):
        order = np.argsort(-best[row], kind="stable")
        _, first = np.unique(cand[row][order], return_index=True)
        keep = order[np.sort(first)]                           # the best hit of each pool id
        keep = keep[cand[row][keep] >= 0][:k]
        out.ids[lo + row, :len(keep)] = cand[row][keep]
        out.scores[lo + row, :len(keep)] = best[row][keep]
        out.views[lo + row, :len(keep)] = best_view[row][keep]


def search_rescored(index, store: VectorStore, queries: np.ndarray, *, k: int, candidates: int,
                    nprobe: int | None = None, chunk: int = 64,
                    allowed: np.ndarray | None = None) -> Neighbours:
    """Top-``k`` pool vectors per query image by exact cosine, over all its views.

    ``queries``: (n, V, dim) unit vectors (V views per test image). Each view
    asks the index for ``candidates`` ids (one batched search, so a flat
    index streams the pool once); the union is re-scored with the stored
    float16 vectors against every (pool view, query view) pair ``allowed``
    (default: all) and the best pair's score kept.
    Time: index search + n*V*candidates*dim flops; memory: the candidate ids
    (n*V*candidates int64) plus one chunk of ``chunk`` images' candidate vectors.
    """
    n, nviews, dim = queries.shape
    if dim != store.dim or dim != index.d:
        raise DataError(f"query vectors have dimension {dim} but the index holds {index.d}-d vectors; "
                        "audit with the embedder the index was built with")
    if nprobe is not None:  # IVF indexes only; a flat index is exhaustive anyway
        faiss.extract_index_ivf(index).nprobe = nprobe
    out = Neighbours(np.full((n, k), -1, dtype=np.int64), np.full((n, k), -np.inf, dtype=np.float32),
                     np.zeros((n, k), dtype=np.int16))
    if n == 0:
        return out
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    with faiss_threads(n * nviews):
        _, cand = index.search(queries.reshape(-1, dim), min(candidates, index.ntotal))
    cand = np.where(cand >= 0, cand % store.ntotal, cand)        # flat: views are stacked
    cand = cand.reshape(n, -1)                                   # (n, V * candidates)
    for lo in range(0, n, chunk):
        _rescore(store, cand[lo:lo + chunk], queries[lo:lo + chunk], k, out, lo, allowed)
    return out
