"""The dedup index: shape planning, split builds merged on disk, exact re-scoring, restarts, ranks."""

import io
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from datascale.config import load_config
from datascale.errors import ConfigError, DataError
from data_tools.dedup import build as build_mod
from data_tools.dedup import extract
from data_tools.dedup.build import build_index
from data_tools.dedup.index import (add_part, merge_parts, open_index, plan_index, search_rescored,
                                    train_index)
from data_tools.dedup.schema import DedupConfig, IndexConfig
from data_tools.dedup.store import VectorStore, write_block
from data_tools.shards.write import ShardsConfig, write_shards


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    x = _clustered(3000, 32, seed=0)
    for b in range(6):
        rows = x[b * 500:(b + 1) * 500]
        write_block(root / "vectors", b, [f"k{b * 500 + i}" for i in range(len(rows))], rows,
                    {"counts": {}, "items": []})
    return root


def _crops_pool(root, photos, count: int, side: int, per_shard: int, seed: int):
    """A shards folder of ``count`` random side x side JPEG crops of ``photos`` (in turn)."""
    rng = np.random.default_rng(seed)
    (root / "images" / "crops").mkdir(parents=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        buffer = io.BytesIO()
        Image.fromarray(photo[y:y + side, x:x + side]).save(buffer, format="JPEG", quality=90)
        (root / "images" / "crops" / f"c{i:04d}.jpg").write_bytes(buffer.getvalue())
    write_shards(root / "images", root / "shards",
                 ShardsConfig(samples_per_shard=per_shard, workers=1), progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A 40-image shards folder (4 shards) of crops of a real photo."""
    return _crops_pool(tmp_path_factory.mktemp("pool"), [skimage.data.astronaut()], 40, 112, 10, 0)


def test_plan_is_exact_for_small_pools_and_ivfpq_within_the_memory_budget():
    small = plan_index(50_000, 128, IndexConfig())
    assert small.kind == "flat"
    assert plan_index(500, 128, IndexConfig(flat_max_vectors=0)).kind == "flat"  # too few to train PQ
    big = plan_index(10_000_000, 128, IndexConfig(max_memory="2GB"))
    assert big.kind == "ivfpq" and big.nlist & (big.nlist - 1) == 0
    assert big.pq_bytes == 32 and big.bytes_per_vector * big.ntotal <= 2e9
    tight = plan_index(10_000_000, 128, IndexConfig(max_memory="300MB"))
    assert tight.pq_bytes < big.pq_bytes and tight.bytes_per_vector * tight.ntotal <= 3e8
    with pytest.raises(ConfigError, match="raise --max-memory"):
        plan_index(300_000_000, 128, IndexConfig(max_memory="1GB"))


def test_parts_merged_on_disk_give_the_exact_neighbours(store, tmp_path):
    vectors = VectorStore(store / "vectors")
    plan = plan_index(vectors.ntotal, vectors.dim, IndexConfig(flat_max_vectors=0, max_train_points=3000))
    assert plan.kind == "ivfpq"
    train_index(plan, vectors, tmp_path, seed=0)
    parts = [add_part(vectors, tmp_path, p, 3, tmp_path / f"p{p}.index", progress=False) for p in range(3)]
    merge_parts(tmp_path, parts)
    index = open_index(tmp_path, plan)
    assert index.ntotal == vectors.ntotal
    rng = np.random.default_rng(1)
    sources = rng.choice(vectors.ntotal, 50, replace=False)
    queries = vectors.vectors(sources) + 0.05 * rng.standard_normal((50, vectors.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = search_rescored(index, vectors, queries[:, None, :], k=5, candidates=50, nprobe=plan.nlist)
    exact = queries @ vectors.vectors(np.arange(vectors.ntotal)).T
    assert (found.ids[:, 0] == exact.argmax(axis=1)).all()
    # scores are exact cosines of the stored vectors, not PQ approximations
    recomputed = np.einsum("nd,nkd->nk", queries, vectors.vectors(found.ids.ravel()).reshape(50, 5, -1))
    np.testing.assert_allclose(found.scores, recomputed, rtol=0, atol=1e-5)
    assert (np.diff(found.scores, axis=1) <= 1e-7).all()


def test_query_views_keep_the_best_view_per_pool_image(store):
    import faiss
    vectors = VectorStore(store / "vectors")
    flat = faiss.IndexFlatIP(vectors.dim)
    flat.add(vectors.vectors(np.arange(vectors.ntotal)))
    target = vectors.vectors(np.array([7]))[0]
    other = _clustered(1, vectors.dim, seed=5)[0]
    found = search_rescored(flat, vectors, np.stack([other, target])[None], k=3, candidates=3)
    assert found.ids[0, 0] == 7 and found.views[0, 0] == 1
    assert found.scores[0, 0] == pytest.approx(1.0, abs=1e-3)
    assert len(set(found.ids[0])) == 3  # a pool image found by two views is listed once


def test_interrupted_embedding_resumes_without_redoing_finished_shards(pool, tmp_path, monkeypatch):
    cfg = load_config(DedupConfig, "dedup/tiny")
    real_write = extract.write_block
    written = []

    def crash_after_two(root, index, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")
        written.append(index)
        real_write(root, index, *args, **kwargs)

    monkeypatch.setattr(extract, "write_block", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_index(pool, tmp_path / "index", cfg, progress=False)
    monkeypatch.setattr(extract, "write_block", real_write)
    embedded = []
    real_embed = extract.embed_shard
    monkeypatch.setattr(extract, "embed_shard",
                        lambda p, shard, *a, **k: embedded.append(shard) or real_embed(p, shard, *a, **k))
    summary = build_index(pool, tmp_path / "index", cfg, progress=False)
    assert sorted(embedded) == [2, 3] and written == [0, 1]
    assert summary["pool_images"] == 40 and summary["vectors"] == 40 * summary["pool_views"]
    fresh = build_index(pool, tmp_path / "fresh", cfg, progress=False)
    a, b = VectorStore(tmp_path / "index" / "vectors"), VectorStore(tmp_path / "fresh" / "vectors")
    np.testing.assert_array_equal(a.vectors(np.arange(40)), b.vectors(np.arange(40)))
    assert fresh["pool_images"] == 40


@pytest.fixture(scope="module")
def big_pool(tmp_path_factory):
    """1,100 small crops of real photos in 4 shards: enough vectors for IVF-PQ."""
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    return _crops_pool(tmp_path_factory.mktemp("big_pool"), photos, 1100, 48, 300, 1)


def test_ranks_and_parts_build_the_same_index_as_one_process(big_pool, tmp_path):
    pool = big_pool
    cfg = load_config(DedupConfig, "dedup/tiny", ["index.flat_max_vectors=0"])
    out = tmp_path / "split"
    for rank in (0, 1):
        build_index(pool, out, cfg, step="embed", rank=rank, world_size=2, progress=False)
    with pytest.raises(DataError, match="--step train"):
        build_index(pool, out, cfg, step="add", rank=0, world_size=1)
    build_index(pool, out, cfg, step="train", rank=0, world_size=1)
    with pytest.raises(DataError, match="parts not built"):
        build_index(pool, out, cfg, step="merge", parts=2, rank=0, world_size=1)
    for part in (0, 1):
        build_index(pool, out, cfg, step="add", part=part, parts=2, rank=0, world_size=1, progress=False)
    summary = build_index(pool, out, cfg, step="merge", parts=2, rank=0, world_size=1)
    assert summary["kind"] == "ivfpq" and summary["pool_images"] == 1100 and summary["parts"] == 2
    assert not (out / build_mod.PARTS_DIR).exists()
    (out / "complete.json").unlink()  # as if killed between the merge and complete.json
    assert build_index(pool, out, cfg, step="merge", parts=2, rank=0, world_size=1)["pool_images"] == 1100
    single = build_index(pool, tmp_path / "single", cfg, progress=False)
    split_store, single_store = VectorStore(out / "vectors"), VectorStore(tmp_path / "single" / "vectors")
    everything = np.arange(1100)
    assert split_store.keys(everything) == single_store.keys(everything)
    np.testing.assert_array_equal(split_store.vectors(everything), single_store.vectors(everything))
    assert single["pool_images"] == 1100 and single["parts"] == 1


def test_a_rank_outside_the_world_is_refused(pool, tmp_path):
    cfg = load_config(DedupConfig, "dedup/tiny")
    with pytest.raises(ConfigError, match="rank 2 of world size 2"):
        build_index(pool, tmp_path / "x", cfg, step="embed", rank=2, world_size=2)


def test_an_ivfpq_index_moved_elsewhere_still_audits(big_pool, tmp_path):
    import shutil
    from data_tools.shards.write import iter_shard_samples
    from datascale.cli import main
    cfg = load_config(DedupConfig, "dedup/tiny", ["index.flat_max_vectors=0"])
    build_index(big_pool, tmp_path / "built", cfg, progress=False)
    shutil.move(tmp_path / "built", tmp_path / "moved")   # the on-disk lists follow the index file
    (tmp_path / "test").mkdir()
    samples = list(iter_shard_samples(sorted(big_pool.glob("*.tar"))))[::200]
    for sample in samples:
        (tmp_path / "test" / f"{sample.key.replace('/', '_')}.jpg").write_bytes(sample.image)
    assert main(["-q", "dedup", "audit", str(tmp_path / "moved"), "--testset", str(tmp_path / "test"),
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny", "--threshold", "0.99",
                 "--set", "audit.views=[identity]"]) == 0
    summary = json.loads((tmp_path / "audit" / "test" / "summary.json").read_text())
    assert summary["index"]["kind"] == "ivfpq" and summary["nprobe"] == 16
    assert summary["images_with_duplicate"] == len(samples) == 6
