"""Bad input is a clear error or a counted, reported skip: nothing is silently lost."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from datascale.errors import DataError
from data_tools.shards.write import ShardsConfig, load_manifest, write_shards
from datascale.cli import main
from test_shards_data import CLASSES, make_folder_tree, photo_bytes, write_manifest


def _manifest_input(tmp_path, blobs: dict[str, bytes], labels=None, suffix=".jsonl"):
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    rows = []
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
        rows.append({"image": name, "labels": (labels or {}).get(name, ["cat"])})
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    return write_manifest(folder / f"list{suffix}", rows)


def _cfg(tmp_path, **kw):
    return ShardsConfig(classes=str(tmp_path / "classes.json"), workers=1, **kw)


def test_truncated_and_non_image_bytes_are_counted_skips(tmp_path):
    good = photo_bytes(0)
    manifest = _manifest_input(tmp_path, {"ok.jpg": good, "cut.jpg": good[: len(good) // 2],
                                          "text.jpg": b"this is not an image",
                                          "empty.jpg": b""})
    summary = write_shards(manifest, tmp_path / "out", _cfg(tmp_path), progress=False)
    assert summary["images"] == 1
    assert summary["skipped"] == {"corrupt_image": 3}
    assert "| corrupt_image | 3 |" in (tmp_path / "out" / "card.md").read_text()
    assert json.loads((tmp_path / "out" / "complete.json").read_text())["skipped"] == \
        {"corrupt_image": 3}


def test_missing_image_file_is_a_counted_skip(tmp_path):
    manifest = _manifest_input(tmp_path, {"ok.jpg": photo_bytes(0)})
    with open(manifest, "a") as handle:
        handle.write(json.dumps({"image": "gone.jpg", "labels": ["cat"]}) + "\n")
    summary = write_shards(manifest, tmp_path / "out", _cfg(tmp_path), progress=False)
    assert summary["images"] == 1 and summary["skipped"] == {"unreadable_image": 1}


def test_truncated_input_tar_keeps_complete_members_and_counts_the_rest(tmp_path):
    source = tmp_path / "wds"
    source.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(4):
            for name, data in ((f"{i:05d}.jpg", photo_bytes(i)), (f"{i:05d}.cls", b"1")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    blob = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        third = tar.getmember("00002.jpg")
    # Cut inside the third image's bytes: two samples survive whole.
    (source / "a.tar").write_bytes(blob[: third.offset_data + third.size // 2])
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    summary = write_shards(source, tmp_path / "out", _cfg(tmp_path), progress=False)
    assert summary["images"] == 2
    assert summary["skipped"].get("truncated_member", 0) + summary["skipped"].get(
        "truncated_tar", 0) >= 1


def test_duplicate_keys_keep_the_first_and_count_the_others(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rows = []
    for i in range(5):
        (folder / f"p{i}.jpg").write_bytes(photo_bytes(i))
        rows.append({"key": "same" if i < 3 else f"k{i}", "image": f"p{i}.jpg", "labels": ["cat"]})
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    manifest = write_manifest(folder / "list.jsonl", rows)
    summary = write_shards(manifest, tmp_path / "out", _cfg(tmp_path), progress=False)
    assert summary["images"] == 3 and summary["skipped"] == {"duplicate_key": 2}
    table = load_manifest(tmp_path / "out").set_index("key")
    import hashlib
    assert table.loc["same", "sha1"] == hashlib.sha1(photo_bytes(0)).hexdigest()  # first one


def test_unknown_class_is_an_error_by_default_and_a_counted_drop_on_request(tmp_path):
    manifest = _manifest_input(tmp_path, {"a.jpg": photo_bytes(0), "b.jpg": photo_bytes(1)},
                               labels={"a.jpg": ["cat", "unicorn"], "b.jpg": ["unicorn"]})
    with pytest.raises(DataError, match="unicorn.*unknown_labels=drop"):
        write_shards(manifest, tmp_path / "out", _cfg(tmp_path), progress=False)
    summary = write_shards(manifest, tmp_path / "out2", _cfg(tmp_path, unknown_labels="drop"),
                           progress=False)
    assert summary["images"] == 1
    assert summary["skipped"] == {"unknown_label_dropped": 2, "no_labels": 1}


def test_empty_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        write_shards(empty, tmp_path / "out", ShardsConfig(workers=1), progress=False)
    tree = make_folder_tree(tmp_path / "tree", per_class=2)
    (tree / "zebra").mkdir()
    (tree / "astronaut" / "notes.txt").write_text("not an image")
    summary = write_shards(tree, tmp_path / "out2", ShardsConfig(workers=1), progress=False)
    assert summary["images"] == 8
    assert summary["skipped"] == {"empty_class_folder": 1, "not_an_image_file": 1}
    assert summary["stats"]["tail"]["classes"] == 5  # the empty class is still a class
    only_empty = tmp_path / "only_empty"
    (only_empty / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        write_shards(only_empty, tmp_path / "out3", ShardsConfig(workers=1), progress=False)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_missing_manifest_column_names_the_column_and_the_fix(tmp_path, suffix, capsys):
    manifest = write_manifest(tmp_path / f"list{suffix}", [{"path": "a.jpg", "labels": ["cat"]}])
    code = main(["shards", "write", str(manifest), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "'image'" in err and "image_column" in err and "Traceback" not in err
    assert main(["-q", "shards", "write", str(manifest), "--out", str(tmp_path / "out2"),
                 "--set", "image_column=path"]) == 1  # a.jpg does not exist: no usable images
    assert "no usable images" in capsys.readouterr().err


def test_bad_config_value_is_a_config_error(tmp_path, capsys):
    tree = make_folder_tree(tmp_path / "tree", per_class=1)
    code = main(["shards", "write", str(tree), "--out", str(tmp_path / "o"),
                 "--set", "samples_per_shard=0"])
    assert code == 2 and "samples_per_shard" in capsys.readouterr().err
