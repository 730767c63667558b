"""`shards write` on img2dataset output (tars and `files` folders) made from real photos.

Labels come from one named source (a KEY.json field, .cls members, or a sidecar
manifest joined by key); captions never become labels; caption, url and sha256
reach the output samples; a start that fails on bad input leaves nothing that
refuses the corrected command.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pandas as pd
import pytest
from PIL import Image

from datascale.cli import main
import webdataset as wds

from data_tools.loader.pipeline import LoaderConfig, make_eval_loader
from data_tools.shards.manifest import load_manifest
from datascale.formats.wds import iter_shard_samples
from test_shards_data import PHOTOS, photo

# Two samples per photo; the captions hold commas, ';' and '|' on purpose.
CAPTIONS = {"astronaut": "an astronaut, smiling; in front of a flag",
            "coffee": "a cup of coffee, on a saucer | top view",
            "chelsea": "a cat, looking to the left",
            "rocket": "a rocket, on the launch pad"}
CLASS_IDS = {name: i for i, name in enumerate(sorted(PHOTOS))}  # chelsea 1 ... as sorted names


def _samples() -> list[dict]:
    """img2dataset-style samples: key, JPEG bytes, caption, and the json img2dataset writes."""
    out = []
    for index in range(2 * len(PHOTOS)):
        name = PHOTOS[index % len(PHOTOS)]
        image = Image.fromarray(photo(name))
        image.thumbnail((96 + 8 * index, 96 + 8 * index))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        key = f"{index:09d}"
        caption = f"{CAPTIONS[name]} (#{index})"
        meta = {"url": f"https://example.org/photos/{name}/{index}.jpg", "key": key,
                "status": "success", "error_message": None, "width": image.width,
                "height": image.height, "original_width": 512, "original_height": 512,
                "exif": None, "sha256": hashlib.sha256(data).hexdigest(), "caption": caption,
                "category": name}
        out.append({"key": key, "jpg": data, "caption": caption, "json": meta, "name": name})
    return out


def _members(sample: dict, label_field: bool, cls: bool) -> list[tuple[str, bytes]]:
    meta = dict(sample["json"])
    if not label_field:
        meta.pop("category")
    members = [(f"{sample['key']}.jpg", sample["jpg"]),
               (f"{sample['key']}.txt", sample["caption"].encode()),
               (f"{sample['key']}.json", json.dumps(meta).encode())]
    if cls:
        members.append((f"{sample['key']}.cls", str(CLASS_IDS[sample["name"]]).encode()))
    return members


def write_tar_input(path, samples, label_field=True, cls=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for name, data in _members(sample, label_field, cls):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_files_input(root, samples, label_field=True):
    """img2dataset `--output_format files`: 00000/KEY.jpg/.txt/.json + 00000.parquet, _stats.json."""
    for sample in samples:
        folder = root / f"{int(sample['key']) // 4:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in _members(sample, label_field, cls=False):
            (folder / name).write_bytes(data)
    pd.DataFrame([s["json"] for s in samples]).to_parquet(root / "00000.parquet")
    (root / "00000_stats.json").write_text(json.dumps({"count": len(samples), "successes": 8}))
    return root


def _write(capsys, source, out, *sets):
    argv = ["-q", "shards", "write", str(source), "--out", str(out), "--set", "workers=1"]
    for item in sets:
        argv += ["--set", item]
    code = main(argv)
    return code, capsys.readouterr()


def _output(out):
    return {s.key: s for s in iter_shard_samples(sorted(out.glob("shard-*.tar")))}


def _names(out, labels):
    classes = json.loads((out / "classes.json").read_text())
    return [classes[i]["name"] for i in labels]


@pytest.fixture(scope="module")
def samples():
    return _samples()


def test_json_field_labels_on_tars_keep_caption_url_and_sha256(tmp_path, capsys, samples):
    source = write_tar_input(tmp_path / "i2d" / "00000.tar", samples).parent
    out = tmp_path / "shards"
    code, streams = _write(capsys, source, out, "labels_column=category")
    assert code == 0, streams.err
    classes = [c["name"] for c in json.loads((out / "classes.json").read_text())]
    assert classes == sorted(PHOTOS)  # one class per photo: no caption words
    got = _output(out)
    assert sorted(got) == [s["key"] for s in samples]
    for sample in samples:
        meta = got[sample["key"]].meta
        assert _names(out, meta["labels"]) == [sample["name"]]
        assert meta["caption"] == sample["caption"]
        assert meta["url"] == sample["json"]["url"]
        assert meta["sha256"] == sample["json"]["sha256"]
        assert hashlib.sha256(got[sample["key"]].image).hexdigest() == meta["sha256"]
    with tarfile.open(sorted(out.glob("shard-*.tar"))[0]) as tar:
        names = tar.getnames()
        first = names[0].split(".")[0]
        caption = tar.extractfile(f"{first}.txt").read().decode()
    assert f"{first}.txt" in names and caption == next(s["caption"] for s in samples
                                                        if s["key"] == first)
    summary = json.loads((out / "complete.json").read_text())
    assert summary["kept"] == {"caption": 8, "sha256": 8, "url": 8}
    assert "caption 8, sha256 8, url 8" in (out / "card.md").read_text()
    assert main(["-q", "shards", "verify", str(out), "--full"]) == 0
    # The extra KEY.txt member breaks neither webdataset nor the training loader.
    read = list(wds.WebDataset([str(p) for p in sorted(out.glob("shard-*.tar"))],
                               shardshuffle=False))
    assert {r["txt"].decode() for r in read} == {s["caption"] for s in samples}
    loader = make_eval_loader(out, LoaderConfig(batch_size=4, num_workers=0, image_size=32),
                              num_classes=len(classes))
    batches = list(loader)
    assert sorted(k for b in batches for k in b.keys) == sorted(got)
    for batch in batches:
        for key, labels in zip(batch.keys, batch.labels):
            assert labels == got[key].meta["labels"]


def test_cls_members_give_the_labels_and_captions_are_not_classes(tmp_path, capsys, samples):
    source = write_tar_input(tmp_path / "i2d" / "00000.tar", samples, label_field=False,
                             cls=True)
    out = tmp_path / "shards"
    code, streams = _write(capsys, source, out)
    assert code == 0, streams.err
    manifest = load_manifest(out).set_index("key")
    for sample in samples:
        assert list(manifest.loc[sample["key"], "labels"]) == [CLASS_IDS[sample["name"]]]
    classes = json.loads((out / "classes.json").read_text())
    assert len(classes) == len(PHOTOS)  # ids 0..3, named by their ids
    assert _output(out)[samples[2]["key"]].meta["caption"] == samples[2]["caption"]


def test_sidecar_manifest_joined_by_key_and_missing_rows_are_counted(tmp_path, capsys, samples):
    source = write_tar_input(tmp_path / "i2d" / "00000.tar", samples, label_field=False)
    sidecar = tmp_path / "labels.csv"
    labelled = samples[:-2]  # the last two samples have no row
    rows = [{"key": s["key"], "labels": f"{s['name']};photo"} for s in labelled]
    pd.DataFrame(rows).to_csv(sidecar, index=False)
    out = tmp_path / "shards"
    code, streams = _write(capsys, source, out, f"labels_manifest={sidecar}")
    assert code == 0, streams.err
    got = _output(out)
    assert sorted(got) == [s["key"] for s in labelled]
    for sample in labelled:
        assert sorted(_names(out, got[sample["key"]].meta["labels"])) == sorted(
            [sample["name"], "photo"])
    summary = json.loads((out / "complete.json").read_text())
    assert summary["skipped"] == {"missing_label": 2}
    assert "| missing_label | 2 |" in (out / "card.md").read_text()
    named = (out / "skipped.tsv").read_text()
    assert samples[-1]["key"] in named and samples[-2]["key"] in named
    assert "skipped: {'missing_label': 2}" in streams.out


def test_without_a_label_source_the_error_names_the_options_and_the_members(
        tmp_path, capsys, samples):
    source = write_tar_input(tmp_path / "i2d" / "00000.tar", samples, label_field=False)
    out = tmp_path / "shards"
    code, streams = _write(capsys, source, out)
    assert code == 1
    for part in ("labels_column=FIELD", "KEY.cls", "labels_manifest=PATH",
                 "this sample has .json, .txt (KEY.json fields: caption, error_message",
                 "never used as labels"):
        assert part in streams.err, part
    assert "Traceback" not in streams.err
    # Without KEY.json the .txt caption ("a red car, parked ...") used to become classes.
    bare = tmp_path / "bare.tar"
    with tarfile.open(bare, "w") as tar:
        for sample in samples:
            for name, data in _members(sample, label_field=False, cls=False)[:2]:  # jpg, txt
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    code, streams = _write(capsys, bare, tmp_path / "o1")
    assert code == 1 and "image this sample has .txt." in streams.err and "labels_manifest" in streams.err
    assert not (tmp_path / "o1").exists()
    # The caption is refused as a label field by name, too.
    code, streams = _write(capsys, source, tmp_path / "o2", "labels_column=caption")
    assert code == 2 and "captions are never labels" in streams.err


def test_failed_first_start_then_corrected_command_succeeds_without_force(
        tmp_path, capsys, samples):
    source = write_tar_input(tmp_path / "i2d" / "00000.tar", samples).parent
    out = tmp_path / "shards"
    code, _ = _write(capsys, source, out)  # default labels_column=labels: no such field
    assert code == 1
    assert not out.exists()  # no config.yaml, skipped.tsv or work files (and the lock removes the folder)
    code, streams = _write(capsys, source, out, "labels_column=category")
    assert code == 0, streams.err
    assert len(load_manifest(out)) == len(samples)
    # A finished run is still protected: another config is refused without --force.
    code, streams = _write(capsys, source, out, "labels_column=category", "samples_per_shard=3")
    assert code != 0 and "--force" in streams.err
    assert len(load_manifest(out)) == len(samples)


def test_samples_without_a_label_are_counted_in_the_report(tmp_path, capsys, samples):
    tar = tmp_path / "i2d" / "00000.tar"
    tar.parent.mkdir(parents=True)
    with tarfile.open(tar, "w") as handle:
        for index, sample in enumerate(samples):
            for name, data in _members(sample, label_field=index % 3 != 2, cls=False):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                handle.addfile(info, io.BytesIO(data))
    out = tmp_path / "shards"
    code, streams = _write(capsys, tar, out, "labels_column=category")
    assert code == 0, streams.err
    unlabelled = [s["key"] for i, s in enumerate(samples) if i % 3 == 2]
    summary = json.loads((out / "complete.json").read_text())
    assert summary["images"] == len(samples) - len(unlabelled) == 6
    assert summary["skipped"] == {"missing_label": len(unlabelled)}
    assert not set(unlabelled) & set(_output(out))


def test_img2dataset_files_folder_gives_the_same_keys_as_its_tar(tmp_path, capsys, samples):
    files = write_files_input(tmp_path / "files", samples)
    tar = write_tar_input(tmp_path / "tars" / "00000.tar", samples)
    out_files, out_tar = tmp_path / "from_files", tmp_path / "from_tar"
    code, streams = _write(capsys, files, out_files, "labels_column=category")
    assert code == 0, streams.err
    assert "input_format: files" in (out_files / "config.yaml").read_text()
    assert _write(capsys, tar, out_tar, "labels_column=category")[0] == 0
    a, b = load_manifest(out_files), load_manifest(out_tar)
    assert a[["key", "rank", "sha1"]].equals(b[["key", "rank", "sha1"]])
    assert [list(x) for x in a["labels"]] == [list(x) for x in b["labels"]]
    got = _output(out_files)
    assert got[samples[5]["key"]].meta["caption"] == samples[5]["caption"]
    summary = json.loads((out_files / "complete.json").read_text())
    assert summary["skipped"] == {}  # 00000.parquet and 00000_stats.json are not samples


@pytest.mark.parametrize("sets, message", [
    (["labels_from=manifest"], "needs --set labels_manifest=PATH"),
    (["labels_from=cls", "labels_manifest=labels.csv"], "drop one of the two"),
    (["labels_manifest=nowhere.csv"], "labels_manifest not found"),
    (["format=folder", "labels_from=json"], "apply to tar ('wds') and img2dataset 'files'"),
])
def test_label_source_keys_that_cannot_apply_are_refused_before_any_output(
        tmp_path, capsys, monkeypatch, samples, sets, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.csv").write_text("key,labels\n000000000,cat\n")
    source = write_tar_input(tmp_path / "i2d" / "00000.tar", samples).parent
    code, streams = _write(capsys, source, tmp_path / "out", *sets)
    assert code in (1, 2) and message in streams.err
    assert not (tmp_path / "out").exists()
