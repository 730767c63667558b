"""Benchmark of the dedup index: build time, bytes per vector, query time and recall at 1M vectors.

    .venv/bin/python benchmarks/bench_dedup.py [--vectors 1000000] [--queries 5000] [--parts 2]

Synthetic clustered unit vectors of the ``pixels`` embedder's dimension go
through the real code path (float16 store blocks -> plan -> train -> add in
parts -> merge on disk -> search + exact re-scoring). Half of the queries are
planted near-copies of pool vectors (cosine ~0.9 to their source, like a
re-encoded or jittered image), half have no copy. The figures, side by side:

* build: train / add / merge seconds, index bytes per vector on disk;
* query: seconds for the test set with exact search (IndexFlatIP) and with
  the IVF-PQ index at several nprobe, and the speed-up;
* recall of the planted pairs at the audit threshold, IVF-PQ + re-scoring
  relative to exact search;
* embedding throughput of the pixels embedder on real photos (JPEG decode +
  DCT), per process;
* a table for 10M-300M pools DERIVED from these per-item costs (not measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datascale.config import load_config  # noqa: E402
from data_tools.dedup.embedders import PixelsEmbedder  # noqa: E402
from data_tools.dedup.prepare import PreparePool, embed_prepared  # noqa: E402
from data_tools.dedup.index import (add_part, merge_parts, open_index, plan_index,  # noqa: E402
                                    search_rescored, train_index)
from data_tools.dedup.schema import DedupConfig  # noqa: E402
from data_tools.dedup.store import VectorStore, write_block  # noqa: E402

THRESHOLD = 0.8


def make_pool(root: Path, n: int, dim: int, block: int, seed: int) -> None:
    """Clustered unit vectors written as float16 store blocks (like embedded shards)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for b, lo in enumerate(range(0, n, block)):
        m = min(block, n - lo)
        x = centres[rng.integers(0, len(centres), m)] + 0.08 * rng.standard_normal((m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        write_block(root, b, [f"k{lo + i}" for i in range(m)], x, {"counts": {}, "items": []})


def make_queries(store: VectorStore, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(queries (count, 1, dim), source id or -1): half planted copies, half fresh points."""
    rng = np.random.default_rng(seed)
    planted = count // 2
    sources = rng.choice(store.ntotal, planted, replace=False)
    base = store.vectors(sources)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base          # orthogonal to the source
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angle = np.arccos(rng.uniform(0.82, 0.98, planted))[:, None]   # cosine to the source
    copies = np.cos(angle) * base + np.sin(angle) * noise
    fresh = store.vectors(rng.choice(store.ntotal, count - planted, replace=False))
    fresh += 0.3 * rng.standard_normal(fresh.shape).astype(np.float32)
    queries = np.concatenate([copies, fresh])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries[:, None, :].astype(np.float32), np.concatenate([sources, -np.ones(count - planted, int)])


def found_pairs(ids: np.ndarray, scores: np.ndarray, sources: np.ndarray) -> int:
    planted = sources >= 0
    hit = (ids[planted] == sources[planted, None]) & (scores[planted] >= THRESHOLD)
    return int(hit.any(axis=1).sum())


def embed_throughput(workers: int, images: int = 400) -> float:
    """Pixels-embedder images/s on JPEG re-encodings of real photos (512-640 px)."""
    import skimage.data
    from PIL import Image
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    blobs = []
    for p in photos:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    cfg = load_config(DedupConfig, "dedup/demo").embedder
    embedder = PixelsEmbedder(cfg)
    items = [(i, blobs[i % len(blobs)]) for i in range(images)]
    started = time.perf_counter()
    with PreparePool(embedder, workers=workers) as pool:
        done = sum(len(b.ids) for b in embed_prepared(embedder, pool.map(items), 256))
    return done / (time.perf_counter() - started)


def build(root: Path, store: VectorStore, cfg, parts: int) -> tuple[object, dict]:
    plan = plan_index(store.ntotal, store.dim, cfg)
    import faiss
    times = {}
    started = time.perf_counter()
    train_index(plan, store, root, cfg.seed)
    times["train"] = time.perf_counter() - started
    # The coarse k-means alone, as IndexIVF trains it (10 iterations, <= 256 points per list),
    # so the derived table can scale it (~ points x lists) apart from PQ training (fixed sample).
    sample = store.sample(min(plan.train_points, 256 * plan.nlist), cfg.seed)
    started = time.perf_counter()
    faiss.Kmeans(store.dim, plan.nlist, niter=10, max_points_per_centroid=256).train(sample)
    times["coarse"] = min(time.perf_counter() - started, times["train"])
    started = time.perf_counter()
    paths = [add_part(store, root, p, parts, root / f"part-{p}.index", progress=False) for p in range(parts)]
    times["add"] = time.perf_counter() - started
    started = time.perf_counter()
    merge_parts(root, paths)
    times["merge"] = time.perf_counter() - started
    plan.parts = parts
    return plan, times


def derived_table(n: int, dim: int, cfg, times: dict, query_s: float, embed_per_s: float) -> list[str]:
    """Per-pool-size estimates from the measured per-item costs (memory budget lifted)."""
    cfg = dataclasses.replace(cfg, max_memory="1TB")
    rows = ["| pool | index (codes+ids) | stored float16 vectors | embed, 1 machine | "
            "index build, 1 machine | embed + build, 16 machines | query 5k images x 1 view |",
            "|---|---|---|---|---|---|---|"]
    add_per_vec = times["add"] / n
    merge_per_vec = times["merge"] / n
    for size in (10_000_000, 30_000_000, 100_000_000, 300_000_000):
        plan = plan_index(size, dim, cfg)
        # coarse k-means cost grows with points x lists; PQ training uses a capped sample.
        base = plan_index(n, dim, cfg)
        points = min(plan.train_points, 256 * plan.nlist) * plan.nlist
        train = times["train"] - times["coarse"] + times["coarse"] * points / (
            min(base.train_points, 256 * base.nlist) * base.nlist)
        embed = size / embed_per_s
        build_1 = train + size * (add_per_vec + merge_per_vec)
        build_16 = embed / 16 + train + size * add_per_vec / 16 + size * merge_per_vec
        # inverted lists scanned per query ~ nprobe * size / nlist; re-scoring cost is constant
        query = query_s * (size / plan.nlist) / (n / base.nlist)
        rows.append(f"| {size // 1_000_000}M | {size * (plan.pq_bytes + 8) / 1e9:.1f} GB "
                    f"(IVF{plan.nlist},PQ{plan.pq_bytes}) | {size * dim * 2 / 1e9:.0f} GB | "
                    f"{embed / 3600:.1f} h | {build_1 / 3600:.2f} h | {build_16 / 3600:.2f} h"
                    f" | {query:.1f} s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    args = parser.parse_args()
    import faiss
    # The demo config's index settings, with IVF-PQ forced (the pool is what is measured).
    cfg = load_config(DedupConfig, "dedup/demo", ["index.flat_max_vectors=0"])
    dim = PixelsEmbedder(cfg.embedder).dim
    print(f"# bench_dedup: {args.vectors:,} vectors of dim {dim}, {args.queries} queries; "
          f"{platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        make_pool(root / "vectors", args.vectors, dim, 100_000, seed=0)
        store = VectorStore(root / "vectors")
        print(f"pool written in {time.perf_counter() - started:.1f}s "
              f"({store.ntotal * dim * 2 / 1e6:.0f} MB float16 on disk)")
        queries, sources = make_queries(store, args.queries, seed=1)
        plan, times = build(root, store, cfg.index, args.parts)
        index_bytes = sum(f.stat().st_size for f in (root / "index.faiss", root / "index.ivfdata"))
        print(f"index {plan.factory}: train {times['train']:.1f}s (coarse k-means alone "
              f"{times['coarse']:.1f}s), add {times['add']:.1f}s "
              f"({args.parts} parts), merge on disk {times['merge']:.1f}s; "
              f"{index_bytes / store.ntotal:.1f} bytes/vector on disk "
              f"(codes+ids {plan.pq_bytes + 8}, + coarse quantizer {plan.nlist * dim * 4 / store.ntotal:.1f})")
        flat = faiss.IndexFlatIP(dim)
        for _, chunk in store.iter_chunks(list(range(len(store.blocks)))):
            flat.add(chunk)
        started = time.perf_counter()
        exact = search_rescored(flat, store, queries, k=10, candidates=10)
        exact_s = time.perf_counter() - started
        exact_found = found_pairs(exact.ids, exact.scores, sources)
        print(f"exact search (IndexFlatIP): {exact_s:.1f}s for {args.queries} queries; "
              f"planted pairs found at cos >= {THRESHOLD}: {exact_found}/{int((sources >= 0).sum())}")
        index = open_index(root, plan)
        best = None
        for nprobe in args.nprobe:
            started = time.perf_counter()
            got = search_rescored(index, store, queries, k=10, candidates=64, nprobe=nprobe)
            seconds = time.perf_counter() - started
            found = found_pairs(got.ids, got.scores, sources)
            print(f"IVF-PQ nprobe={nprobe} + exact re-scoring of 64 candidates: {seconds:.2f}s "
                  f"({exact_s / seconds:.1f}x faster than exact); recall vs exact {found / exact_found:.4f}")
            if best is None and found / exact_found >= 0.99:
                best = (nprobe, seconds)
        best = best or (args.nprobe[-1], seconds)
        rates = {w: embed_throughput(w) for w in (0, 2)}
        print("pixels embedder on 512-640 px JPEGs: " +
              ", ".join(f"{r:.0f} img/s with {w} worker processes" for w, r in rates.items()))
        print(f"\nDERIVED (not measured) from the per-item costs above, nprobe={best[0]}, "
              f"embedding at {max(rates.values()):.0f} img/s per machine:\n")
        print("\n".join(derived_table(store.ntotal, dim, cfg.index, times, best[1], max(rates.values()))))


if __name__ == "__main__":
    main()
