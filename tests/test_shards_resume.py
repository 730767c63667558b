"""An interrupted `shards write` never lists a half-written shard and resumes to the same output."""

from __future__ import annotations

import json

import pytest

import data_tools.shards.write as shards_mod
from datascale.errors import OutputExistsError
from datascale.formats.wds import read_shard
from data_tools.shards.write import ShardsConfig, load_manifest, write_shards
from test_shards_data import make_world


def _cfg():
    return ShardsConfig(samples_per_shard=5, workers=1)


def test_interrupted_run_resumes_to_identical_output(tmp_path, monkeypatch):
    world = make_world(tmp_path / "world", images=30)
    write_shards(world, tmp_path / "clean", _cfg(), progress=False)

    real = shards_mod._write_shard
    calls = {"n": 0}

    def dying(task):
        calls["n"] += 1
        if calls["n"] == 3:
            # What kill -9 in the middle of a shard leaves behind: a temporary file.
            (tmp_path / "out" / f".{task['name']}.abc.tmp").write_bytes(b"half a tar")
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(shards_mod, "_write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        write_shards(world, tmp_path / "out", _cfg(), progress=False)
    out = tmp_path / "out"
    assert not (out / "manifest.parquet").exists() and not (out / "complete.json").exists()
    listed = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in listed] == ["shard-000000.tar", "shard-000001.tar"]
    for path in listed:  # every shard under its final name is whole
        assert len(list(read_shard(path))) == 5

    monkeypatch.setattr(shards_mod, "_write_shard", real)
    summary = write_shards(world, out, _cfg(), progress=False)
    assert summary["images"] == 30
    assert not list(out.glob(".*.tmp")) and not (out / ".work").exists()
    assert load_manifest(out).equals(load_manifest(tmp_path / "clean"))
    for name in json.loads((out / "sizes.json").read_text()):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_finished_output_is_skipped_and_another_config_refused(tmp_path):
    world = make_world(tmp_path / "world", images=10)
    first = write_shards(world, tmp_path / "out", _cfg(), progress=False)
    before = (tmp_path / "out" / "shard-000000.tar").stat().st_mtime_ns
    again = write_shards(world, tmp_path / "out", _cfg(), progress=False)
    assert again["images"] == first["images"]
    assert (tmp_path / "out" / "shard-000000.tar").stat().st_mtime_ns == before
    with pytest.raises(OutputExistsError, match="--force"):
        write_shards(world, tmp_path / "out", ShardsConfig(samples_per_shard=3, workers=1),
                     progress=False)
    forced = write_shards(world, tmp_path / "out", ShardsConfig(samples_per_shard=3, workers=1),
                          force=True, progress=False)
    assert forced["shards"] == 4
