"""Batches: image layout and range, dense/sparse multi-hot targets, closure, eval coverage."""

from __future__ import annotations

import pytest
import torch

from data_tools.loader.pipeline import LoaderConfig, make_eval_loader, make_train_loader
from data_tools.shards.write import load_manifest
from data_tools.subsets.subset import load_subset
from test_shards_data import CLASSES, small_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return small_shards(tmp_path_factory.mktemp("batches"), images=24, per_shard=5)


def _labels_by_key(shards):
    manifest = load_manifest(shards)
    return dict(zip(manifest["key"], manifest["labels"].map(list)))


def test_train_batches_are_nchw_in_unit_range_with_dense_multi_hot_targets(shards):
    cfg = LoaderConfig(batch_size=8, num_workers=2, shuffle_buffer=6, image_size=24)
    loader = make_train_loader(shards, cfg, num_classes=7)
    truth = _labels_by_key(shards)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    for batch in batches:
        assert batch.images.shape == (8, 3, 24, 24) and batch.images.dtype == torch.float32
        assert batch.images.min() >= -1.0 and batch.images.max() <= 1.0
        assert batch.images.std() > 0.1  # real photo content, not a constant
        assert batch.targets.shape == (8, 7) and batch.targets.dtype == torch.float32
        for row, key in enumerate(batch.keys):
            assert batch.labels[row] == truth[key] == batch.label_lists[row]
            assert torch.nonzero(batch.targets[row]).flatten().tolist() == truth[key]
    assert loader.epoch == 1 and loader.samples_seen == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_uint8_hand_over_gives_the_model_the_same_floats(shards, workers):
    """pixels: uint8 sends a quarter of the bytes; model_input scales them to exactly the floats
    the float hand-over sends, for train batches (same crops and flips) and eval batches."""
    from data_tools.loader.transforms import model_input

    def batches(pixels, make):
        cfg = LoaderConfig(batch_size=8, num_workers=workers, shuffle_buffer=6, image_size=24,
                           pixels=pixels)
        return list(make(shards, cfg, num_classes=7))

    for make in (make_train_loader, make_eval_loader):
        floats, raw = batches("float", make), batches("uint8", make)
        assert len(floats) == len(raw) >= 3
        for f, r in zip(floats, raw):
            assert r.images.dtype == torch.uint8 and r.images.shape == f.images.shape
            assert r.images.max() > 100 and r.keys == f.keys and torch.equal(r.targets, f.targets)
            assert r.images.element_size() * r.images.nelement() * 4 == \
                f.images.element_size() * f.images.nelement()
            assert torch.equal(model_input(r.images, "cpu", torch.float32), f.images)
            assert torch.equal(model_input(r.images, "cpu", torch.bfloat16),
                               model_input(f.images, "cpu", torch.bfloat16))


def test_sparse_targets_equal_dense_and_closure_adds_ancestors(shards):
    dense_cfg = LoaderConfig(batch_size=6, num_workers=0, image_size=16, hierarchy_closure=True)
    sparse_cfg = LoaderConfig(batch_size=6, num_workers=2, image_size=16, hierarchy_closure=True,
                              targets="sparse")
    dense = list(make_eval_loader(shards, dense_cfg, num_classes=7))
    sparse = list(make_eval_loader(shards, sparse_cfg, num_classes=7))
    assert sorted(k for b in dense for k in b.keys) == sorted(k for b in sparse for k in b.keys)
    by_key = {k: row for b in dense for k, row in zip(b.keys, b.targets)}
    for batch in sparse:
        assert batch.targets.is_sparse
        for key, row in zip(batch.keys, batch.targets.to_dense()):
            assert torch.equal(row, by_key[key])
    parent = {c["id"]: c["parent"] for c in CLASSES}
    truth = _labels_by_key(shards)
    for key, row in by_key.items():
        closed = set(truth[key]) | {parent[i] for i in truth[key] if parent[i] is not None}
        assert set(torch.nonzero(row).flatten().tolist()) == closed


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_loader_yields_every_sample_once_in_a_fixed_order(shards, workers):
    cfg = LoaderConfig(batch_size=5, num_workers=workers, image_size=16)
    first = [k for b in make_eval_loader(shards, cfg, num_classes=7) for k in b.keys]
    again = [k for b in make_eval_loader(shards, cfg, num_classes=7) for k in b.keys]
    assert first == again and sorted(first) == sorted(_labels_by_key(shards))
    assert len(first) == len(set(first)) == 24
    ranks = [[k for b in make_eval_loader(shards, cfg, num_classes=7, rank=r, world_size=2)
              for k in b.keys] for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) + len(ranks[1]) == 24


def test_eval_is_a_centre_crop_and_paper_transform_is_299(shards):
    cfg = LoaderConfig(batch_size=3, num_workers=0, image_size=16)
    a = next(iter(make_eval_loader(shards, cfg, num_classes=7)))
    b = next(iter(make_eval_loader(shards, cfg, num_classes=7)))
    assert torch.equal(a.images, b.images)
    paper = LoaderConfig(batch_size=2, num_workers=0, transform="paper")
    batch = next(iter(make_train_loader(shards, paper, num_classes=7)))
    assert batch.images.shape == (2, 3, 299, 299)


def test_a_subset_folder_is_a_source_and_only_its_samples_are_read(shards, tmp_path):
    from data_tools.subsets.make import make_subsets
    from data_tools.subsets.subset import SubsetsConfig
    make_subsets(shards, tmp_path / "sub", SubsetsConfig(sizes=["9"]), progress=False)
    subset = load_subset(tmp_path / "sub" / "9")
    cfg = LoaderConfig(batch_size=4, num_workers=0, image_size=16)
    keys = [k for b in make_eval_loader(subset, cfg, num_classes=7) for k in b.keys]
    assert keys == load_manifest(tmp_path / "sub" / "9")["key"].tolist()
    train = make_train_loader(tmp_path / "sub" / "9", cfg, num_classes=7)
    seen = {k for _ in range(3) for b in train for k in b.keys}
    assert seen == set(keys)


def test_a_missing_shard_is_counted_not_fatal(tmp_path):
    import json
    shards = small_shards(tmp_path, images=12, per_shard=4, name="damaged")
    sizes = json.loads((shards / "sizes.json").read_text())
    (shards / "shard-000001.tar").unlink()
    cfg = LoaderConfig(batch_size=4, num_workers=2, image_size=16)
    loader = make_eval_loader(shards, cfg, num_classes=7)
    keys = [k for b in loader for k in b.keys]
    lost = sizes["shard-000001.tar"]
    assert len(keys) == 12 - lost
    assert loader.skipped["missing_shard"] == 1 and loader.skipped["missing_sample"] == lost
    train = make_train_loader(shards, LoaderConfig(batch_size=4, num_workers=0, image_size=16),
                              num_classes=7)
    batches = list(train)
    assert all(b.positions == 4 for b in batches)
    assert sum(len(b.keys) for b in batches) < 12 and train.skipped["missing_sample"] >= 1


def test_train_crop_is_the_resized_photo_window_or_its_mirror_about_half_the_time():
    """On a real photo: each train crop equals a window of the resized image, unflipped or
    mirrored left-right (never anything else), the mirror is taken about half the time, and the
    same rng state gives the same pixels (exact resume relies on it)."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata
    from data_tools.loader.transforms import CropTransform
    photo = Image.fromarray(skdata.chelsea())  # 451 x 300
    transform = CropTransform(72, 64, train=True)
    width, height = photo.size
    scale = 72 / min(width, height)
    resized = np.asarray(photo.resize((round(width * scale), round(height * scale)), Image.BILINEAR))
    flips = 0
    for seed in range(60):
        out = transform(photo, np.random.default_rng(seed))
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        assert np.array_equal(out, transform(photo, np.random.default_rng(seed)))
        rng = np.random.default_rng(seed)
        left = int(rng.integers(0, resized.shape[1] - 64 + 1))
        top = int(rng.integers(0, resized.shape[0] - 64 + 1))
        window = resized[top: top + 64, left: left + 64]
        flipped = rng.random() < 0.5
        assert np.array_equal(out, window[:, ::-1] if flipped else window)
        assert not np.array_equal(window, window[:, ::-1])  # the photo tells the two apart
        flips += flipped
    assert 18 <= flips <= 42
