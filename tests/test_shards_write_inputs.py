"""`shards write` turns every kind of input into rank-ordered WebDataset shards (docs/formats.md)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from data_tools.shards.write import ShardsConfig, iter_shard_samples, load_manifest, write_shards
from datascale.cli import main
from test_shards_data import (CLASSES, PHOTOS, make_folder_tree, make_world, photo_bytes,
                              write_manifest)


def _shards(folder):
    return sorted(folder.glob("shard-*.tar"))


def test_folder_tree_becomes_rank_ordered_shards_readable_by_webdataset(tmp_path):
    tree = make_folder_tree(tmp_path / "tree", per_class=6)
    out = tmp_path / "shards"
    code = main(["-q", "shards", "write", str(tree), "--out", str(out),
                 "--set", "samples_per_shard=5", "--set", "workers=2"])
    assert code == 0
    for name in ("manifest.parquet", "sizes.json", "classes.json", "card.md", "config.yaml",
                 "complete.json"):
        assert (out / name).is_file(), name
    manifest = load_manifest(out)
    assert list(manifest.columns) == ["key", "shard", "labels", "rank", "bytes", "sha1", "ext"]
    assert len(manifest) == 24 and manifest["rank"].is_monotonic_increasing
    parquet = pq.ParquetFile(out / "manifest.parquet")
    assert parquet.schema_arrow.field("labels").type.value_type == "int32"
    assert parquet.metadata.num_row_groups == 1  # 5 shards' parts gathered into one row group
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == 24 and max(sizes.values()) <= 5
    assert [p.name for p in _shards(out)] == sorted(sizes)
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes] == sorted(PHOTOS)
    # webdataset itself reads the shards; samples come in rank order, bytes unchanged.
    dataset = wds.WebDataset([str(p) for p in _shards(out)], shardshuffle=False)
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == manifest["key"].tolist()
    for sample, row in zip(samples, manifest.itertuples()):
        meta = json.loads(sample["json"])
        assert meta["rank"] == row.rank and meta["labels"] == list(row.labels)
        assert hashlib.sha1(sample["jpg"]).hexdigest() == row.sha1
        assert meta["source"].endswith(".jpg")
        folder = meta["source"].split("/")[0]
        assert classes[meta["labels"][0]]["name"] == folder
    original = json.loads(samples[0]["json"])["source"]
    assert (tree / original).read_bytes() == samples[0]["jpg"]
    card = (out / "card.md").read_text()
    assert "images: 24 in" in card and "labels per image: 1.000" in card
    assert "4 classes have fewer than 20 images" in card


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_manifest_with_names_or_ids_relative_to_its_folder(tmp_path, suffix):
    images = tmp_path / "data" / "img"
    images.mkdir(parents=True)
    rows = []
    for i in range(10):
        (images / f"p{i}.jpg").write_bytes(photo_bytes(i))
        # Parquet lists hold one type: ids as text there, as numbers elsewhere.
        labels = ["cat", "cup"] if i % 2 else (["3"] if suffix == ".parquet" else [3])
        rows.append({"image": f"img/p{i}.jpg", "labels": labels})
    manifest = write_manifest(tmp_path / "data" / f"list{suffix}", rows)
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    out = tmp_path / "shards"
    cfg = ShardsConfig(classes=str(tmp_path / "classes.json"), samples_per_shard=4, workers=1)
    summary = write_shards(manifest, out, cfg, progress=False)
    assert summary["images"] == 10 and summary["skipped"] == {}
    table = load_manifest(out).set_index("key")
    assert list(table.loc["img/p1", "labels"]) == [1, 5]
    assert list(table.loc["img/p0", "labels"]) == [3]


def test_world_pretrain_and_eval_keep_true_labels_and_measure_noise(tmp_path):
    world = make_world(tmp_path / "world", images=30)
    out = tmp_path / "pretrain"
    summary = write_shards(world, out, ShardsConfig(samples_per_shard=8, workers=1),
                           progress=False)
    manifest = load_manifest(out)
    assert "true_labels" in manifest.columns and summary["images"] == 30
    noisy = sum(len(set(a) - set(b)) for a, b in zip(manifest["labels"], manifest["true_labels"]))
    total = sum(len(a) for a in manifest["labels"])
    assert summary["stats"]["noise"]["noise_rate"] == pytest.approx(noisy / total)
    assert "measured label noise" in (out / "card.md").read_text()
    sample = next(iter_shard_samples(sorted(out.glob("*.tar"))))
    assert set(sample.meta) == {"labels", "rank", "source", "true_labels"}
    assert json.loads((out / "classes.json").read_text())[1]["parent"] == 0
    ev = tmp_path / "eval"
    summary = write_shards(world, ev, ShardsConfig(split="eval", workers=1), progress=False)
    assert summary["images"] == 7
    eval_manifest = load_manifest(ev)
    assert (eval_manifest["labels"].map(list) == eval_manifest["true_labels"].map(list)).all()


def _tar_input(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_img2dataset_style_tars_with_json_or_cls_labels_and_format_handling(tmp_path):
    source = tmp_path / "wds"
    source.mkdir()
    bmp = io.BytesIO()
    Image.open(io.BytesIO(photo_bytes(5))).save(bmp, format="BMP")
    members = [("000000000.jpg", photo_bytes(0)), ("000000000.json", b'{"labels": ["cat"]}'),
               ("000000001.png", photo_bytes(1, fmt="PNG")), ("000000001.cls", b"3"),
               ("000000002.webp", photo_bytes(2, fmt="WEBP")), ("000000002.txt", b"rocket, red"),
               ("000000002.cls", b"6"),
               ("000000003.bmp", bmp.getvalue()), ("000000003.cls", b"5")]
    _tar_input(source / "00000.tar", members)
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    out = tmp_path / "shards"
    summary = write_shards(source, out, ShardsConfig(classes=str(tmp_path / "classes.json"),
                                                     workers=1), progress=False)
    assert summary["images"] == 4 and summary["reencoded"] == 1
    table = load_manifest(out).set_index("key")
    assert table.loc["000000001", "ext"] == "png" and table.loc["000000002", "ext"] == "webp"
    assert table.loc["000000003", "ext"] == "jpg"  # BMP re-encoded, counted above
    assert list(table.loc["000000002", "labels"]) == [6]
    samples = {s.key: s for s in iter_shard_samples(_shards(out))}
    assert samples["000000001"].image == photo_bytes(1, fmt="PNG")  # original bytes kept
    assert samples["000000002"].meta["caption"] == "rocket, red"  # a caption, never a label


def test_output_does_not_depend_on_input_order_or_worker_count(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    rows = []
    for i in range(20):
        (images / f"p{i}.jpg").write_bytes(photo_bytes(i))
        rows.append({"image": f"img/p{i}.jpg", "labels": [PHOTOS[i % 4]]})
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    a = write_manifest(tmp_path / "a.jsonl", rows)
    b = write_manifest(tmp_path / "b.jsonl", shuffled)
    write_shards(a, tmp_path / "sa", ShardsConfig(samples_per_shard=6, workers=1), progress=False)
    write_shards(b, tmp_path / "sb", ShardsConfig(samples_per_shard=6, workers=2,
                                                  bucket_records=100), progress=False)
    ma, mb = load_manifest(tmp_path / "sa"), load_manifest(tmp_path / "sb")
    assert ma.equals(mb)
    for x, y in zip(_shards(tmp_path / "sa"), _shards(tmp_path / "sb")):
        assert x.read_bytes() == y.read_bytes()  # byte-identical tars
    # Ranks never overlap between consecutive shards.
    by_shard = ma.groupby("shard")["rank"].agg(["min", "max"]).sort_index()
    assert (by_shard["min"].to_numpy()[1:] > by_shard["max"].to_numpy()[:-1]).all()
    assert np.all(np.diff(ma["rank"].to_numpy()) > 0)
