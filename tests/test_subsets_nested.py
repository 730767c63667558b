"""Nested subsets are hash-rank prefixes of the shards, with the statistics of the full set."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datascale.errors import DataError
from datascale.lineage import mark_complete, prepare_output_dir, config_record
from data_tools.labels import Vocabulary
from data_tools.shards.write import load_manifest
from data_tools.subsets.make import make_subsets
from data_tools.subsets.subset import SubsetsConfig, full_subset, load_subset, parse_sizes
from datascale.cli import main
from test_shards_data import small_shards


def test_subsets_are_nested_rank_prefixes_with_one_filtered_boundary_shard(tmp_path, capsys):
    shards = small_shards(tmp_path, images=40, per_shard=7)
    code = main(["-q", "subsets", "make", str(shards), "--out", str(tmp_path / "sub"),
                 "--sizes", "10,25,40"])
    assert code == 0
    assert "10: 10 images" in capsys.readouterr().out
    full = load_manifest(shards)
    previous: set = set()
    for size in (10, 25, 40):
        folder = tmp_path / "sub" / str(size)
        for name in ("subset.json", "manifest.parquet", "stats.json", "classes.json",
                     "config.yaml", "complete.json"):
            assert (folder / name).is_file(), name
        subset = load_subset(folder)
        assert subset.images == size and subset.path == folder
        rows = load_manifest(folder)
        assert rows["key"].tolist() == full["key"].tolist()[:size]  # a rank prefix
        assert (rows["rank"] < subset.max_rank).all()
        assert previous <= set(rows["key"])                          # nested
        previous = set(rows["key"])
        streamed = [s.key for s in subset.iter_samples()]
        assert streamed == rows["key"].tolist()
        assert [e.filter for e in subset.shards][:-1] == [False] * (len(subset.shards) - 1)
        assert sum(e.samples for e in subset.shards) == size
        assert subset.shard_paths()[0] == shards.resolve() / "shard-000000.tar"
    assert load_subset(tmp_path / "sub" / "40").max_rank == 1.0
    assert not load_subset(tmp_path / "sub" / "40").shards[-1].filter
    data = json.loads((tmp_path / "sub" / "10" / "subset.json").read_text())
    assert set(data) >= {"name", "images", "fraction", "max_rank", "salt", "shards_root",
                         "shards", "classes"}


def test_fraction_sizes_use_the_fraction_as_max_rank(tmp_path):
    shards = small_shards(tmp_path, images=40, per_shard=10)
    subsets = make_subsets(shards, tmp_path / "sub", SubsetsConfig(sizes=["0.25", "0.5", "1"]),
                           progress=False)
    assert [s.max_rank for s in subsets] == [0.25, 0.5, 1.0]
    ranks = load_manifest(shards)["rank"]
    assert [s.images for s in subsets] == [int((ranks < f).sum()) for f in (0.25, 0.5, 1.0)]
    assert subsets[-1].images == 40


def test_size_parsing_and_sizes_larger_than_the_collection(tmp_path, capsys):
    assert parse_sizes(["10M", "30M", "1.5K", "400"]) == (False, [10**7, 3 * 10**7, 1500, 400])
    assert parse_sizes(["0.033", "0.1", "0.33", "1"]) == (True, [0.033, 0.1, 0.33, 1.0])
    with pytest.raises(DataError):
        parse_sizes(["lots"])
    shards = small_shards(tmp_path, images=12, per_shard=5)
    code = main(["subsets", "make", str(shards), "--out", str(tmp_path / "s"), "--sizes", "10,300M"])
    err = capsys.readouterr().err
    assert code == 1 and "larger than the collection (12 images)" in err


def test_a_shards_folder_is_the_full_subset(tmp_path):
    shards = small_shards(tmp_path, images=15, per_shard=4)
    subset = load_subset(shards)
    assert subset == full_subset(shards)
    assert subset.images == 15 and subset.max_rank == 1.0 and subset.name == "all"
    assert len(list(subset.iter_samples())) == 15 and subset.salt == "datascale"
    with pytest.raises(DataError, match="neither a subset folder"):
        load_subset(tmp_path)


# --------------------------------------------------------------------------- statistics


def fake_shards(root, rows: int, seed: int = 0):
    """A manifest-only shards folder: Zipf-tailed multi-label rows, 3-level hierarchy.

    Subset making reads only manifest.parquet, sizes.json and classes.json.
    """
    rng = np.random.default_rng(seed)
    parents = [None] * 4 + [i % 4 for i in range(16)] + [4 + i % 16 for i in range(60)]
    vocab = Vocabulary([f"c{i}" for i in range(80)], parents)
    prepare_output_dir(root, config_record("shards", {"salt": "datascale"}))
    vocab.save(root / "classes.json")
    leaves = np.arange(20, 80)
    weights = 1.0 / np.arange(1, 61) ** 1.1
    weights /= weights.sum()
    counts = 1 + rng.binomial(2, 0.13, size=rows)
    labels = [sorted(set(rng.choice(leaves, size=c, p=weights).tolist())) for c in counts]
    ranks = np.sort(rng.random(rows))
    shard = [f"shard-{i // 500:06d}.tar" for i in range(rows)]
    table = pa.table({"key": [f"k{i}" for i in range(rows)], "shard": shard,
                      "labels": pa.array(labels, pa.list_(pa.int32())), "rank": ranks,
                      "bytes": np.full(rows, 1000), "sha1": ["0" * 40] * rows,
                      "ext": ["jpg"] * rows})
    pq.write_table(table, root / "manifest.parquet", row_group_size=4096)
    sizes = {}
    for name in shard:
        sizes[name] = sizes.get(name, 0) + 1
    (root / "sizes.json").write_text(json.dumps(sizes))
    mark_complete(root)
    return root, vocab, labels


def test_streamed_statistics_are_exact_and_independent_of_batch_size(tmp_path):
    root, vocab, labels = fake_shards(tmp_path / "shards", 20000)
    small = make_subsets(root, tmp_path / "a", SubsetsConfig(sizes=["3000", "20000"],
                                                             batch_rows=1024), progress=False)
    big = make_subsets(root, tmp_path / "b", SubsetsConfig(sizes=["3000", "20000"],
                                                           batch_rows=65536), progress=False)
    for s1, s2 in zip(small, big):
        a = json.loads((s1.folder / "stats.json").read_text())
        b = json.loads((s2.folder / "stats.json").read_text())
        assert a == {**b, "name": a["name"]}
    # The all-rows subset reads its rows past 3000 with only the tally's columns
    # (row groups of 4096 rows): its statistics must be as exact as the written one's.
    for subset, rows in ((small[0], 3000), (small[1], 20000)):
        stats = json.loads((subset.folder / "stats.json").read_text())
        first = labels[:rows]
        expected = np.zeros(80, dtype=int)
        closed = np.zeros(80, dtype=int)
        for ids in first:  # brute force, one image at a time
            expected[ids] += 1
            closed[vocab.close(ids)] += 1
        assert stats["labels"]["class_images"] == expected.tolist()
        assert stats["closed"]["class_images"] == closed.tolist()
        assert stats["labels"]["labels"] == sum(len(ids) for ids in first)
        assert stats["closed"]["labels"] == sum(len(vocab.close(ids)) for ids in first)


def test_the_all_rows_subset_links_the_shards_manifest(tmp_path):
    root, _, _ = fake_shards(tmp_path / "shards", 5000)
    part, full = make_subsets(root, tmp_path / "sub", SubsetsConfig(sizes=["0.5", "1"]),
                              progress=False)
    linked = full.folder / "manifest.parquet"
    assert linked.stat().st_ino == (root / "manifest.parquet").stat().st_ino  # no bytes copied
    assert pq.read_table(linked).equals(pq.read_table(root / "manifest.parquet"))
    assert pq.read_table(part.folder / "manifest.parquet").num_rows == part.images


def test_subset_statistics_match_the_full_set_within_sampling_tolerance(tmp_path):
    root, _, _ = fake_shards(tmp_path / "shards", 40000, seed=1)
    subsets = make_subsets(root, tmp_path / "sub", SubsetsConfig(sizes=["0.1", "1"]),
                           progress=False)
    part, full = (json.loads((s.folder / "stats.json").read_text()) for s in subsets)
    assert part["images"] == pytest.approx(4000, rel=0.1)
    # Label cardinality: the standard error at n=4000 is about 0.006.
    assert part["labels"]["labels_per_image"] == pytest.approx(
        full["labels"]["labels_per_image"], abs=0.03)
    p = np.asarray(part["labels"]["class_images"], float)
    q = np.asarray(full["labels"]["class_images"], float)
    total_variation = 0.5 * np.abs(p / p.sum() - q / q.sum()).sum()
    assert total_variation < 0.06
    assert part["closed"]["labels_per_image"] > part["labels"]["labels_per_image"]


def test_a_manifest_without_row_group_statistics_gives_the_same_subsets(tmp_path):
    root, _, _ = fake_shards(tmp_path / "shards", 20000)
    with_stats = make_subsets(root, tmp_path / "a", SubsetsConfig(sizes=["3000", "20000"]),
                              progress=False)
    manifest = root / "manifest.parquet"
    pq.write_table(pq.read_table(manifest), manifest, row_group_size=4096, write_statistics=False)
    assert pq.ParquetFile(manifest).metadata.row_group(1).column(3).statistics is None
    without = make_subsets(root, tmp_path / "b", SubsetsConfig(sizes=["3000", "20000"]),
                           progress=False)
    for a, b in zip(with_stats, without):
        assert (json.loads((a.folder / "stats.json").read_text())
                == json.loads((b.folder / "stats.json").read_text()))
        assert pq.read_table(a.folder / "manifest.parquet").equals(
            pq.read_table(b.folder / "manifest.parquet"))
