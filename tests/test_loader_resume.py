"""Exact resume: (epoch, samples_seen) continues the stream as if it had never stopped."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from datascale.errors import DataError
from data_tools.loader.pipeline import LoaderConfig, make_train_loader
from data_tools.loader.streams import ShuffleBuffer
from test_shards_data import small_shards


def _cfg(workers: int) -> LoaderConfig:
    return LoaderConfig(batch_size=6, num_workers=workers, shuffle_buffer=10, image_size=16,
                        seed=7)


def _run(source, cfg, epochs, epoch=0, samples_seen=0, **kw):
    loader = make_train_loader(source, cfg, num_classes=7, epoch=epoch,
                               samples_seen=samples_seen, **kw)
    out = []
    while loader.epoch < epochs:
        for batch in loader:
            out.append((dict(loader.state_dict()), batch))
    return out


def _same(a, b) -> bool:
    return (a.keys == b.keys and torch.equal(a.images, b.images)
            and torch.equal(a.targets, b.targets) and a.positions == b.positions)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return small_shards(tmp_path_factory.mktemp("resume"), images=40, per_shard=7)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resumed_loader_continues_identically(shards, workers):
    cfg = _cfg(workers)
    reference = _run(shards, cfg, epochs=3)
    assert len(reference) == 3 * 7  # ceil(40 / 6) batches an epoch
    for cut in (0, 4, 6, 11, 19):
        state = reference[cut][0]
        resumed = _run(shards, cfg, epochs=3, epoch=state["epoch"],
                       samples_seen=state["samples_seen"])
        expected = [batch for _, batch in reference[cut + 1:]]
        assert len(resumed) == len(expected)
        assert all(_same(a, b) for (_, a), b in zip(resumed, expected)), f"cut {cut}"


def test_epochs_differ_and_cover_the_data(shards):
    reference = _run(shards, _cfg(0), epochs=2)
    keys = [k for _, batch in reference for k in batch.keys]
    assert len(set(keys)) == 40  # two epochs see every sample
    first, second = (reference[i * 7][1].keys for i in range(2))
    assert first != second


def _corrupt_second_image(path):
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    jpgs = [i for i, (m, _) in enumerate(members) if m.name.endswith(".jpg")]
    info, _ = members[jpgs[1]]
    info.size = 9
    members[jpgs[1]] = (info, b"not a jpg")
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))


def test_resume_stays_exact_around_corrupt_samples(tmp_path):
    shards = small_shards(tmp_path, images=30, per_shard=6)
    _corrupt_second_image(shards / "shard-000001.tar")
    cfg = _cfg(2)
    reference = _run(shards, cfg, epochs=2)
    sizes = [len(batch.keys) for _, batch in reference]
    assert min(sizes) == 5 and all(b.positions == 6 for _, b in reference)
    skipped = sum(b.skipped.get("corrupt_image", 0) for _, b in reference)
    assert skipped >= 1
    state = reference[3][0]
    resumed = _run(shards, cfg, epochs=2, **state_args(state))
    assert all(_same(a, b) for (_, a), (_, b) in zip(resumed, reference[4:]))


def state_args(state):
    return {"epoch": state["epoch"], "samples_seen": state["samples_seen"]}


def test_shuffle_buffer_fast_forward_equals_stepping(shards):
    size, emitted = 37, 9000
    stepped = ShuffleBuffer(size, [1, 2, 3])
    slots = list(range(size))
    for t in range(emitted):
        slots[stepped.pick()] = size + t
    jumped = ShuffleBuffer(size, [1, 2, 3])
    assert jumped.fast_forward(emitted).tolist() == slots
    assert [jumped.pick() for _ in range(50)] == [stepped.pick() for _ in range(50)]


def test_ranks_get_equal_epochs_of_different_samples(shards):
    cfg = _cfg(0)
    rank0 = _run(shards, cfg, epochs=1, rank=0, world_size=2)
    rank1 = _run(shards, cfg, epochs=1, rank=1, world_size=2)
    assert len(rank0) == len(rank1) == 4  # ceil(40 / (6 * 2))
    assert rank0[0][1].keys != rank1[0][1].keys


def test_resume_position_must_be_a_batch_boundary(shards):
    with pytest.raises(DataError, match="multiple of batch_size"):
        make_train_loader(shards, _cfg(0), num_classes=7, samples_seen=5)
    with pytest.raises(DataError, match="num_classes"):
        make_train_loader(shards, _cfg(0), num_classes=3)
    assert np.isfinite(len(make_train_loader(shards, _cfg(0), num_classes=7)))
