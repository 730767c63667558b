"""Class-restricted subsets (the paper's 941-class ablation): keep, renumber, drop, report."""

from __future__ import annotations

import json

import pytest

from datascale.errors import DataError
from data_tools.loader.pipeline import LoaderConfig, make_eval_loader
from data_tools.shards.write import load_manifest
from data_tools.subsets.make import make_subsets
from data_tools.subsets.subset import SubsetsConfig, load_subset
from datascale.cli import main
from test_shards_data import small_shards


def test_named_classes_are_kept_renumbered_and_the_drop_is_reported(tmp_path):
    shards = small_shards(tmp_path, images=40, per_shard=6)
    code = main(["-q", "subsets", "make", str(shards), "--out", str(tmp_path / "sub"),
                 "--sizes", "5,15", "--classes", "cat,rocket,0"])
    assert code == 0
    full = load_manifest(shards)
    keep = [0, 1, 6]                      # animal, cat, rocket: renumbered 0, 1, 2
    eligible = full[full["labels"].map(lambda ids: any(i in keep for i in ids))]
    for size in (5, 15):
        folder = tmp_path / "sub" / f"{size}-3classes"
        subset = load_subset(folder)
        assert subset.classes == keep and subset.num_classes == 3 and subset.images == size
        rows = load_manifest(folder)
        assert rows["key"].tolist() == eligible["key"].tolist()[:size]
        for labels, original in zip(rows["labels"], eligible["labels"][:size]):
            assert list(labels) == sorted(keep.index(i) for i in original if i in keep)
        classes = json.loads((folder / "classes.json").read_text())
        assert [c["name"] for c in classes] == ["animal", "cat", "rocket"]
        assert [c["parent"] for c in classes] == [None, 0, None]
        assert [c["source_id"] for c in classes] == keep
        samples = list(subset.iter_samples())
        assert [s.key for s in samples] == rows["key"].tolist()
        assert all(s.meta["labels"] == list(r) for s, r in zip(samples, rows["labels"]))
        stats = json.loads((folder / "stats.json").read_text())
        dropped = stats["restriction"]["dropped"]
        before = full[full["rank"] < subset.max_rank]
        assert dropped["rows_before_restriction"] == len(before)
        assert dropped["images"] == len(before) - size
        assert stats["restriction"]["classes_kept"] == 3
        source = subset.source_vocabulary()
        closed = [0, 0, 0]
        for original in eligible["labels"][:size]:  # brute force: close, then keep
            for cid in source.close(list(original)):
                if cid in keep:
                    closed[keep.index(cid)] += 1
        assert stats["closed"]["class_images"] == closed
    loader = make_eval_loader(tmp_path / "sub" / "15-3classes", LoaderConfig(
        batch_size=4, num_workers=0, image_size=16), num_classes=3)
    batches = list(loader)
    assert sum(len(b.keys) for b in batches) == 15
    assert all(b.targets.shape[1] == 3 for b in batches)


def test_top_k_classes_and_unknown_class_names(tmp_path, capsys):
    shards = small_shards(tmp_path, images=40, per_shard=6)
    subsets = make_subsets(shards, tmp_path / "sub", SubsetsConfig(sizes=["1.0"], top_classes=2),
                           progress=False)
    full = load_manifest(shards)
    counts = {}
    for ids in full["labels"]:
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    top = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:2])
    assert subsets[0].classes == top
    with pytest.raises(DataError, match="unknown class 'unicorn'"):
        make_subsets(shards, tmp_path / "x", SubsetsConfig(sizes=["1.0"], classes=["unicorn"]),
                     progress=False)
    code = main(["subsets", "make", str(shards), "--out", str(tmp_path / "y"), "--sizes", "1.0",
                 "--top-classes", "2", "--classes", "cat"])
    assert code == 2 and "either classes or top_classes" in capsys.readouterr().err


def test_an_eval_set_read_in_a_restricted_class_space_keeps_every_image(tmp_path):
    """Pretraining on a class-restricted subset evaluates on the whole eval set: an image with
    none of the kept classes is a negative for each (not a missing sample, not dropped)."""
    import dataclasses

    shards = small_shards(tmp_path, images=40, per_shard=6)
    assert main(["-q", "subsets", "make", str(shards), "--out", str(tmp_path / "sub"),
                 "--sizes", "15", "--classes", "cat,rocket,0"]) == 0
    train = load_subset(tmp_path / "sub" / "15-3classes")
    evalset = dataclasses.replace(load_subset(shards), classes=train.classes, keep_unlabelled=True)
    full = load_manifest(shards)
    keep = train.classes
    loader = make_eval_loader(evalset, LoaderConfig(batch_size=4, num_workers=0, image_size=16),
                              num_classes=3)
    batches = list(loader)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(full["key"])  # every image, once
    targets = {k: row for b in batches for k, row in zip(b.keys, b.targets.to_dense())}
    unlabelled = [k for k, ids in zip(full["key"], full["labels"]) if not any(i in keep for i in ids)]
    assert unlabelled and all(targets[k].sum() == 0 for k in unlabelled)
    assert sum(1 for k in keys if targets[k].sum() > 0) == len(full) - len(unlabelled)
