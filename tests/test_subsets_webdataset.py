"""Plain `webdataset` reads every nested subset exactly (urls.txt, brace pattern, sizes.json,
the cut boundary shard; class-restricted subsets: their own relabelled tars), and `image_format=jpeg` makes one extension serve a whole shard set."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from webdataset.shardlists import expand_urls

from datascale.cli import main
from data_tools.shards.write import load_manifest
from data_tools.subsets.subset import load_subset
from test_shards_data import PHOTOS, photo, photo_bytes

SIZES = (7, 13, 22)   # of 24 images; 22 ends inside a shard, as 7 and 13 do


def _mixed_tree(root, per_class: int = 6):
    """ROOT/CLASS/img_N.{jpg,png}: real photos, every other image a PNG (RGB, RGBA or palette)."""
    sources = {}
    for c, name in enumerate(PHOTOS):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            index = c + len(PHOTOS) * i
            if i % 2 == 0:
                path, data = root / name / f"img_{i}.jpg", photo_bytes(index)
            else:
                image = Image.open(io.BytesIO(photo_bytes(index, fmt="PNG")))
                if i == 1:     # transparent top-left corner, to see where alpha goes
                    image = image.convert("RGBA")
                    image.putpixel((0, 0), (10, 20, 30, 0))
                elif i == 3:
                    image = image.convert("P", palette=Image.Palette.ADAPTIVE)
                out = io.BytesIO()
                image.save(out, format="PNG")
                path, data = root / name / f"img_{i}.png", out.getvalue()
            path.write_bytes(data)
            sources[f"{name}/img_{i}"] = data
    return root, sources


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wds")
    tree, sources = _mixed_tree(tmp / "tree")
    shards = tmp / "shards"
    assert main(["-q", "shards", "write", str(tree), "--out", str(shards),
                 "--set", "samples_per_shard=5", "--set", "workers=1"]) == 0
    assert main(["-q", "subsets", "make", str(shards), "--out", str(tmp / "sub"),
                 "--sizes", ",".join(map(str, SIZES))]) == 0
    return tmp, shards, sources


def _urls(folder):
    return (folder / "urls.txt").read_text().split("\n")[:-1]


def test_plain_webdataset_reads_exactly_each_nested_subset(mixed):
    tmp, shards, sources = mixed
    full = load_manifest(shards)
    assert set(full["ext"]) == {"jpg", "png"}  # originals kept by default
    previous: set = set()
    for size in SIZES:
        folder = tmp / "sub" / str(size)
        subset = load_subset(folder)
        expected = full["key"].tolist()[:size]        # the subset: a rank prefix
        urls = _urls(folder)
        samples = list(wds.WebDataset(urls, shardshuffle=False))
        keys = [s["__key__"] for s in samples]
        assert keys == expected and len(set(keys)) == size  # exactly its keys, once each
        assert previous < set(keys)
        previous = set(keys)
        assert [s.key for s in subset.iter_samples()] == keys  # datascale's loader agrees
        for sample in samples:                                  # member bytes as written
            image = sample.get("jpg", sample.get("png"))
            assert image == sources[sample["__key__"]]
        # sizes.json beside the shards (where open_clip looks) counts what each shard holds.
        sizes = json.loads((folder / "shards" / "sizes.json").read_text())
        read = {}
        for sample in samples:
            read[os.path.basename(sample["__url__"])] = read.get(os.path.basename(sample["__url__"]), 0) + 1
        assert sizes == read and sum(sizes.values()) == size
        assert [os.path.basename(u) for u in urls] == list(sizes)
        record = json.loads((folder / "subset.json").read_text())["webdataset"]
        assert expand_urls(record["pattern"]) == urls
        assert [s["__key__"] for s in wds.WebDataset(record["pattern"], shardshuffle=False)] == keys
        assert record["samples"] == size and record["shards"] == len(urls)
        # Full shards are links to the shards folder; the boundary shard is a cut copy.
        boundary = folder / record["boundary"]["shard"]
        assert not boundary.is_symlink() and record["boundary"]["samples"] == sizes[boundary.name]
        assert sizes[boundary.name] < json.loads((shards / "sizes.json").read_text())[boundary.name]
        for url in urls[:-1]:
            assert os.path.islink(url)
            assert os.path.realpath(url) == str((shards / os.path.basename(url)).resolve())
        # The subset's own stream mixes extensions: an image selector that takes both reads it.
        decoded = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg;png", "json")
        assert sum(1 for image, meta in decoded if image.size[0] > 0 and meta["rank"] < subset.max_rank) == size


def test_rerunning_subsets_make_writes_byte_identical_boundary_shards(mixed, tmp_path):
    tmp, shards, _ = mixed
    first = {size: _boundary_bytes(tmp / "sub" / str(size)) for size in SIZES}
    assert main(["-q", "subsets", "make", str(shards), "--out", str(tmp_path / "again"),
                 "--sizes", ",".join(map(str, SIZES))]) == 0
    assert main(["-q", "subsets", "make", str(shards), "--out", str(tmp / "sub"), "--force",
                 "--sizes", ",".join(map(str, SIZES))]) == 0
    for size in SIZES:
        assert _boundary_bytes(tmp_path / "again" / str(size)) == first[size]
        assert _boundary_bytes(tmp / "sub" / str(size)) == first[size]
        with tarfile.open(fileobj=io.BytesIO(first[size])) as tar:
            members = tar.getmembers()
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o444)}
        assert len(members) == 2 * json.loads(
            (tmp / "sub" / str(size) / "subset.json").read_text())["webdataset"]["boundary"]["samples"]


def _boundary_bytes(folder) -> bytes:
    record = json.loads((folder / "subset.json").read_text())["webdataset"]
    return (folder / record["boundary"]["shard"]).read_bytes()


def test_image_format_jpeg_stores_every_image_as_a_decodable_jpeg(mixed, tmp_path):
    tmp, _, sources = mixed
    out = tmp_path / "jpeg"
    assert main(["-q", "shards", "write", str(tmp / "tree"), "--out", str(out),
                 "--set", "samples_per_shard=5", "--set", "workers=1",
                 "--set", "image_format=jpeg", "--set", "jpeg_quality=90"]) == 0
    summary = json.loads((out / "complete.json").read_text())
    pngs = sum(1 for data in sources.values() if data.startswith(b"\x89PNG"))
    assert pngs == 12
    assert summary["reencoded"] == pngs and summary["reencoded_from"] == {"png": pngs}
    assert summary["image_format"] == "jpeg" and summary["jpeg_quality"] == 90
    assert f"re-encoded to JPEG at quality 90 (`image_format=jpeg`: every image stored as JPEG): {pngs}" \
        in (out / "card.md").read_text()
    manifest = load_manifest(out)
    assert set(manifest["ext"]) == {"jpg"} and len(manifest) == 24
    urls = sorted(str(p) for p in out.glob("shard-*.tar"))
    members = [name for url in urls for name in tarfile.open(url).getnames()]
    assert {name.rsplit(".", 1)[1] for name in members} == {"jpg", "json"}
    # One extension serves the whole set: the to_tuple("jpg", "json") that the default breaks.
    images = {}
    for key, image, meta in wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple(
            "__key__", "jpg", "json"):
        images[key] = image
    assert len(images) == 24
    for key, data in sources.items():
        row = manifest[manifest["key"] == key].iloc[0]
        if data.startswith(b"\xff\xd8"):  # JPEG inputs are kept byte for byte
            assert row["sha1"] == hashlib.sha1(data).hexdigest()
        original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
        assert images[key].mode == "RGB" and images[key].size == original.shape[1::-1]
        assert np.abs(np.asarray(images[key], dtype=np.float64) - original).mean() < 6  # same photo
    transparent = images["astronaut/img_1"].getpixel((0, 0))
    assert min(transparent) > 200      # alpha composited on white, not the hidden (10, 20, 30)


def test_default_shards_break_a_jpg_only_reader_and_jpeg_quality_is_checked(mixed, capsys):
    _, shards, _ = mixed
    urls = sorted(str(p) for p in shards.glob("shard-*.tar"))
    with pytest.raises(ValueError):
        list(wds.WebDataset(urls, shardshuffle=False).to_tuple("jpg", "json"))
    assert main(["shards", "write", str(shards), "--out", str(shards.parent / "x"),
                 "--set", "jpeg_quality=0"]) != 0
    assert "jpeg_quality" in capsys.readouterr().err


RESTRICTED = (5, 9)    # of the 12 coffee and rocket images; 9 spans two materialised tars


def _restricted(out, shards, *extra):
    assert main(["-q", "subsets", "make", str(shards), "--out", str(out), "--classes", "coffee,rocket",
                 "--sizes", ",".join(map(str, RESTRICTED)), *extra]) == 0
    return [out / f"{size}-2classes" for size in RESTRICTED]


def _tar_bytes(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted((folder / "shards").glob("*.tar"))}


def test_plain_webdataset_reads_class_restricted_subsets_with_subset_label_ids(mixed, tmp_path):
    tmp, shards, sources = mixed
    source_ids = {c["name"]: c["id"] for c in json.loads((shards / "classes.json").read_text())}
    previous: set = set()
    for folder in _restricted(tmp_path / "cats", shards):
        subset = load_subset(folder)
        assert sorted(subset.classes) == sorted(source_ids[c] for c in ("coffee", "rocket"))
        expected = [(s.key, s.meta["labels"], s.meta["source_labels"]) for s in subset.iter_samples()]
        assert len(expected) == subset.images and all(labels for _, labels, _ in expected)
        urls = _urls(folder)
        samples = list(wds.WebDataset(urls, shardshuffle=False))
        metas = [json.loads(s["json"]) for s in samples]
        got = [(s["__key__"], m["labels"], m["source_labels"]) for s, m in zip(samples, metas)]
        assert got == expected and len({k for k, _, _ in got}) == subset.images  # each key once
        assert all(m["rank"] < subset.max_rank for m in metas)
        assert {lab for _, labels, _ in got for lab in labels} <= set(range(subset.num_classes))
        assert any(labels != stored for _, labels, stored in got)  # renumbered, not source ids
        keys = {k for k, _, _ in got}
        assert previous < keys and {k.split("/")[0] for k in keys} == {"coffee", "rocket"}
        previous = keys
        for sample in samples:                       # image members copied byte for byte
            assert sample.get("jpg", sample.get("png")) == sources[sample["__key__"]]
        sizes = json.loads((folder / "shards" / "sizes.json").read_text())
        read: dict = {}
        for sample in samples:
            name = os.path.basename(sample["__url__"])
            read[name] = read.get(name, 0) + 1
        assert sizes == read and sum(sizes.values()) == subset.images
        assert list(sizes) == [f"shard-{i:06d}.tar" for i in range(len(sizes))]
        assert max(sizes.values()) == 5 and len(sizes) == -(-subset.images // 5)
        assert not any(os.path.islink(url) for url in urls)
        record = json.loads((folder / "subset.json").read_text())["webdataset"]
        assert expand_urls(record["pattern"]) == urls
        assert record["samples"] == subset.images and record["shards"] == len(urls)
        assert record["boundary"] is None and record["materialised"] is True


def test_rerunning_subsets_make_writes_byte_identical_class_restricted_tars(mixed, tmp_path):
    _, shards, _ = mixed
    first = [_tar_bytes(f) for f in _restricted(tmp_path / "a", shards)]
    assert all(first)
    assert [_tar_bytes(f) for f in _restricted(tmp_path / "b", shards)] == first
    assert [_tar_bytes(f) for f in _restricted(tmp_path / "a", shards, "--force")] == first
    for tars in first:
        for data in tars.values():
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                members = tar.getmembers()
            assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o444)}
    # A class-restricted subset made before the view existed gets it on the next run.
    folder = tmp_path / "a" / f"{RESTRICTED[0]}-2classes"
    record = json.loads((folder / "subset.json").read_text())
    expected = record.pop("webdataset")
    (folder / "subset.json").write_text(json.dumps({**record, "webdataset": None}))
    for path in (folder / "shards").iterdir():
        path.unlink()
    (folder / "urls.txt").unlink()
    _restricted(tmp_path / "a", shards)
    assert json.loads((folder / "subset.json").read_text())["webdataset"] == expected
    assert _tar_bytes(folder) == first[0]


def test_a_subset_made_before_the_view_existed_gets_it_on_the_next_run(mixed, tmp_path):
    _, shards, _ = mixed
    out = tmp_path / "old"
    assert main(["-q", "subsets", "make", str(shards), "--out", str(out), "--sizes", "7"]) == 0
    folder = out / "7"
    record = json.loads((folder / "subset.json").read_text())
    expected = record.pop("webdataset")
    (folder / "subset.json").write_text(json.dumps(record))  # as an older datascale wrote it
    (folder / "urls.txt").unlink()
    for path in (folder / "shards").iterdir():
        path.unlink()
    assert main(["-q", "subsets", "make", str(shards), "--out", str(out), "--sizes", "7"]) == 0
    assert json.loads((folder / "subset.json").read_text())["webdataset"] == expected
    assert len(list(wds.WebDataset(_urls(folder), shardshuffle=False))) == 7


def test_webdataset_copy_false_leaves_a_class_restricted_subset_to_the_loader(mixed, tmp_path):
    _, shards, _ = mixed
    assert main(["-q", "subsets", "make", str(shards), "--out", str(tmp_path / "cats"),
                 "--sizes", "4", "--classes", "chelsea", "--set", "webdataset_copy=false"]) == 0
    folder = tmp_path / "cats" / "4-1classes"
    assert json.loads((folder / "subset.json").read_text())["webdataset"] is None
    assert not (folder / "urls.txt").exists() and not list(folder.glob("shards/*.tar"))
    assert len(list(load_subset(folder).iter_samples())) == 4
