"""Each rank of `shards write` reads only its part of the input, and the parts add up to one machine's read.

The record's place, (part, position in the part), orders the records as one
machine reads them whatever the number of ranks, so shard bytes stay the same
(tests/test_shards_distributed.py checks them on a world); here on every
other input format, with a truncated tar and with classes found in the labels.
"""

from __future__ import annotations

import collections
import json
import tarfile
import threading

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data_tools.shards.samples as samples_mod
from data_tools.shards.distributed import Ranks
from data_tools.shards.readers import detect_format, input_parts
from data_tools.shards.sources import manifest_pieces, manifest_rows
from data_tools.shards.write import ShardsConfig, _records_of_rank, write_shards
from test_shards_data import make_folder_tree, make_world, photo_bytes, write_manifest
from test_shards_distributed import _fingerprint
from test_shards_img2dataset_input import _samples, write_files_input, write_tar_input

NAMES = ["chelsea", "coffee", "astronaut", "rocket"]


def _records(fmt, source, cfg, rank, world_size, tmp_path):
    ranks = Ranks(tmp_path / f"w{world_size}", rank, world_size)
    skipped: collections.Counter = collections.Counter()
    return [(place, rec.key) for place, rec in _records_of_rank(fmt, source, cfg, ranks, skipped)]


def _inputs(tmp_path) -> dict:
    """One input of each format, each cut into several parts."""
    images = tmp_path / "m" / "img"
    images.mkdir(parents=True)
    rows = []
    for i in range(30):
        (images / f"p{i}.jpg").write_bytes(photo_bytes(i))
        rows.append({"image": f"img/p{i}.jpg", "labels": json.dumps([NAMES[i % 4]])})
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "m" / "list.parquet", row_group_size=7)  # 5 row groups
    samples = _samples()
    tars = tmp_path / "tars"
    for t in range(4):
        write_tar_input(tars / f"in-{t:02d}.tar", samples[2 * t: 2 * t + 2])
    return {
        "folder": (make_folder_tree(tmp_path / "tree", per_class=5), {}),
        "parquet": (tmp_path / "m" / "list.parquet", {}),
        "jsonl": (write_manifest(tmp_path / "m" / "list.jsonl", rows), {}),
        "csv": (write_manifest(tmp_path / "m" / "list.csv", rows), {}),
        "wds": (tars, {"labels_column": "category"}),
        "files": (write_files_input(tmp_path / "files", samples), {"labels_column": "category"}),
        "world": (make_world(tmp_path / "world", images=40), {}),
    }


@pytest.mark.parametrize("name", ["folder", "parquet", "jsonl", "csv", "wds", "files", "world"])
def test_ranks_read_disjoint_slices_that_add_up_to_one_machine(tmp_path, name):
    source, sets = _inputs(tmp_path)[name]
    fmt = detect_format(source)
    cfg = ShardsConfig(**sets)
    one = _records(fmt, source, cfg, 0, 1, tmp_path)
    assert len(one) >= 8
    assert [place for place, _ in one] == sorted(place for place, _ in one)
    for world_size in (2, 3):
        slices = [_records(fmt, source, cfg, r, world_size, tmp_path) for r in range(world_size)]
        keys = [key for part in slices for _, key in part]
        assert len(keys) == len(set(keys)) == len(one)
        # Sorted by place, the ranks' records are one machine's, in its order.
        assert [key for _, key in sorted(r for part in slices for r in part)] == [k for _, k in one]
        if name != "csv":  # a CSV cannot be cut: every rank reads it whole (and keeps i % W == r)
            assert input_parts(fmt, source, cfg, world_size) is not None
            for rank, part in enumerate(slices):  # a place names its part: each rank read only its own
                assert {place[0] % world_size for place, _ in part} <= {rank}
    assert (input_parts(fmt, source, cfg, 2) is None) == (name == "csv")


def test_a_rank_opens_only_its_own_tars(tmp_path, monkeypatch):
    source, sets = _inputs(tmp_path)["wds"]
    opened = collections.defaultdict(list)
    real = samples_mod._tar_groups

    def spy(path, skipped):
        opened[threading.current_thread().name].append(path.name)
        return real(path, skipped)

    monkeypatch.setattr(samples_mod, "_tar_groups", spy)
    for rank in (0, 1):
        thread = threading.Thread(target=_records, name=f"rank{rank}",
                                  args=("wds", source, ShardsConfig(**sets), rank, 2, tmp_path))
        thread.start()
        thread.join()
    assert opened == {"rank0": ["in-00.tar", "in-02.tar"], "rank1": ["in-01.tar", "in-03.tar"]}


@pytest.mark.parametrize("text", [
    "", "\n", '{"a": 1}', '{"a": 1}\n', '{"a": 1}\n\n{"a": 2}\n', "".join(f'{{"a": {i}}}\n' for i in range(50)),
    '{"a": "' + "x" * 300 + '"}\n{"a": 2}\n',   # a line longer than a piece
])
@pytest.mark.parametrize("pieces", [1, 2, 3, 7, 64])
def test_jsonl_pieces_cut_at_line_starts_and_cover_every_line(tmp_path, text, pieces):
    path = tmp_path / "m.jsonl"
    path.write_text(text)
    cut = manifest_pieces(path, pieces)
    assert cut[0].start == 0 and cut[-1].end == path.stat().st_size
    data = path.read_bytes()
    for a, b in zip(cut, cut[1:]):
        assert a.end == b.start and data[b.start - 1:b.start] == b"\n"
    rows = [row for piece in cut for row in manifest_rows(path, piece=piece)]
    assert rows == list(manifest_rows(path))


def test_parquet_pieces_are_its_row_groups_and_name_rows_by_their_number(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"image": f"{i}.jpg", "labels": "[1]"} for i in range(10)]),
                   path, row_group_size=4)
    cut = manifest_pieces(path, 2)
    assert [(p.row_groups, p.first_row) for p in cut] == [((0,), 1), ((1,), 5), ((2,), 9)]
    assert [r["image"] for p in cut for r in manifest_rows(path, piece=p)] == [f"{i}.jpg" for i in range(10)]


def test_a_bad_row_is_named_by_its_byte_offset_in_a_piece(tmp_path):
    from datascale.errors import DataError
    path = tmp_path / "m.jsonl"
    good = '{"image": "a.jpg", "labels": [1]}\n'
    path.write_text(good * 20 + "{not json\n")
    cut = manifest_pieces(path, 2)
    with pytest.raises(DataError, match=rf"the line at byte {20 * len(good)}: not valid JSON"):
        list(manifest_rows(path, piece=cut[1]))
    with pytest.raises(DataError, match=r"line 21: not valid JSON"):
        list(manifest_rows(path))
    with pytest.raises(DataError, match=r"line 21: not valid JSON"):  # one rank: one piece, lines counted
        list(manifest_rows(path, piece=manifest_pieces(path, 1)[0]))


def _threads(target, world_size):
    results = [None] * world_size

    def run(rank):
        try:
            results[rank] = target(rank)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_two_ranks_on_tars_with_a_truncated_one_and_no_classes_file_write_one_machines_bytes(tmp_path):
    """Classes come from the labels (each rank finds those of its tars, the union is taken) and
    the truncated tar's skip is counted once, by the rank that read it."""
    samples = _samples()
    tars = tmp_path / "tars"
    for t in range(4):
        write_tar_input(tars / f"in-{t:02d}.tar", samples[2 * t: 2 * t + 2])
    data = (tars / "in-03.tar").read_bytes()
    (tars / "in-03.tar").write_bytes(data[: len(data) // 2])  # cut inside its second sample
    # The rocket photo is only in rank 1's tars (1 and 3): rank 0 alone would not know the class.
    assert {s["name"] for s in samples[2:4] + samples[6:8]} >= {"rocket"}
    cfg = dict(labels_column="category", samples_per_shard=3, workers=1)
    one = write_shards(tars, tmp_path / "one", ShardsConfig(**cfg), progress=False)
    results = _threads(lambda rank: write_shards(tars, tmp_path / "two", ShardsConfig(**cfg),
                                                 progress=False, rank=rank, world_size=2,
                                                 barrier_timeout=60), 2)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert results[0]["skipped"] == one["skipped"] and sum(one["skipped"].values()) >= 1
    assert _fingerprint(tmp_path / "two") == _fingerprint(tmp_path / "one")
    names = [c["name"] for c in json.loads((tmp_path / "one" / "classes.json").read_text())]
    assert "rocket" in names


def test_two_ranks_on_a_parquet_manifest_write_one_machines_bytes(tmp_path):
    source, _ = _inputs(tmp_path)["parquet"]
    cfg = dict(samples_per_shard=4, workers=1)
    write_shards(source, tmp_path / "one", ShardsConfig(**cfg), progress=False)
    results = _threads(lambda rank: write_shards(source, tmp_path / "two", ShardsConfig(**cfg),
                                                 progress=False, rank=rank, world_size=2,
                                                 barrier_timeout=60), 2)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert _fingerprint(tmp_path / "two") == _fingerprint(tmp_path / "one")
    assert len(pd.read_parquet(tmp_path / "two" / "manifest.parquet")) == 30
