"""Shards keep every input and verify what the manifest promises (docs/reliability.md):
keys unique and stable for any Unicode name, a bad KEY.json counted, `verify --full`
checking every member's bytes and labels against the manifest."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from datascale import cli
from data_tools.ranks import sanitize_key
from data_tools.shards.write import load_manifest
from test_shards_data import photo_bytes, small_shards


def _folder(root, names_by_class):
    for cls, names in names_by_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            (root / cls / name).write_bytes(photo_bytes(hash((cls, name)) % 1000 + i))
    return root


def _write(source, out, capsys):
    code = cli.main(["shards", "write", str(source), "--out", str(out), "--set", "workers=1"])
    out_err = capsys.readouterr()
    assert code == 0, out_err.err
    return json.loads((out / "complete.json").read_text())


@pytest.mark.parametrize("layout", ["japanese_names", "same_names_in_cjk_classes",
                                    "names_that_sanitise_alike"])
def test_no_input_is_lost_to_key_sanitising(tmp_path, capsys, layout):
    names = {
        "japanese_names": {"写真": [f"猫の写真{n}.jpg" for n in "一二三四五六七八九十"]},
        "same_names_in_cjk_classes": {"猫": [f"{i:03d}.jpg" for i in range(5)],
                                      "犬": [f"{i:03d}.jpg" for i in range(5)]},
        "names_that_sanitise_alike": {"x": ["a b.jpg", "a_b.jpg", "a.b.jpg", "a-b.jpg",
                                            "e\u0301.jpg", "\u00e9.jpg"]},
    }[layout]
    source = _folder(tmp_path / "in", names)
    summary = _write(source, tmp_path / "shards", capsys)
    total = sum(len(v) for v in names.values())
    assert summary["images"] == total and "duplicate_key" not in summary["skipped"], summary
    manifest = load_manifest(tmp_path / "shards")
    assert manifest["key"].nunique() == total
    classes = json.loads((tmp_path / "shards" / "classes.json").read_text())
    class_names = [c["name"] if isinstance(c, dict) else c for c in classes.get("classes", classes)] \
        if isinstance(classes, dict) else [c["name"] if isinstance(c, dict) else c for c in classes]
    per_class = manifest["labels"].explode().value_counts()
    for cls, files in names.items():  # every class listed has all of its images
        assert per_class[class_names.index(cls)] == len(files)
    # Keys are stable: the same input gives the same keys again.
    _write(source, tmp_path / "again", capsys)
    assert sorted(load_manifest(tmp_path / "again")["key"]) == sorted(manifest["key"])
    assert cli.main(["shards", "verify", "--full", str(tmp_path / "shards")]) == 0


def test_sanitised_keys_keep_letters_and_never_collide():
    assert sanitize_key("猫/001") == "猫/001"
    assert sanitize_key("a b") != sanitize_key("a_b") == "a_b"
    assert sanitize_key("e\u0301") != sanitize_key("\u00e9")
    long = "長" * 200
    key = sanitize_key(long)
    assert len((key + ".jpeg").encode()) <= 255 and key != sanitize_key(long + "x")
    assert "." not in sanitize_key("x.y.z") and sanitize_key("x.y.z") == sanitize_key("x.y.z")


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_key_json_that_is_not_an_object_is_counted_not_a_crash(tmp_path, capsys):
    src = tmp_path / "tars"
    src.mkdir()
    _tar(src / "in.tar", [("good.jpg", photo_bytes(1)), ("good.json", b'{"labels": ["cat"]}'),
                          ("list.jpg", photo_bytes(2)), ("list.json", b'["cat", "dog"]'),
                          ("num.jpg", photo_bytes(3)), ("num.json", b"3"),
                          ("text.jpg", photo_bytes(4)), ("text.json", b'"cat"')])
    summary = _write(src, tmp_path / "shards", capsys)
    assert summary["images"] == 1 and summary["skipped"]["bad_label_member"] == 3


def _rewrite_member(shard, key_suffix, change):
    members = []
    with tarfile.open(shard) as tar:
        for info in tar:
            data = tar.extractfile(info).read()
            if info.name.endswith(key_suffix) and not members_changed(members):
                data = change(data)
                info.pax_headers = {}
                members.append((info.name, data, True))
            else:
                members.append((info.name, data, False))
    _tar(shard, [(n, d) for n, d, _ in members])


def members_changed(members):
    return any(flag for _, _, flag in members)


@pytest.mark.parametrize("damage", ["flipped_bit_in_jpeg", "changed_label"])
def test_verify_full_checks_bytes_and_labels_against_the_manifest(tmp_path, capsys, damage):
    shards = small_shards(tmp_path, images=12, per_shard=6)
    shard = shards / "shard-000000.tar"
    if damage == "flipped_bit_in_jpeg":
        def change(data):  # one bit in the middle of the entropy-coded data: still decodes
            middle = len(data) // 2
            return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]
        _rewrite_member(shard, ".jpg", change)
    else:
        def change(data):
            meta = json.loads(data)
            meta["labels"] = [label + 1 for label in meta["labels"]] or [0]
            return json.dumps(meta).encode()
        _rewrite_member(shard, ".json", change)
    assert cli.main(["shards", "verify", str(shards)]) == 0  # the quick check cannot see it...
    quick = capsys.readouterr().out
    assert "Not checked" in quick and "--full" in quick  # ... and says so
    assert cli.main(["shards", "verify", "--full", str(shards)]) == 1
    out = capsys.readouterr().out
    expected = "sha1" if damage == "flipped_bit_in_jpeg" else "labels in KEY.json differ"
    assert expected in out and "shard-000000.tar" in out and "FAILED" in out, out


def test_every_skipped_input_is_named_not_only_the_first_five(tmp_path, capsys):
    source = _folder(tmp_path / "in", {"cat": [f"good{i}.jpg" for i in range(3)]})
    for i in range(8):
        (source / "cat" / f"broken{i}.jpg").write_bytes(b"not a jpeg at all")
    summary = _write(source, tmp_path / "shards", capsys)
    assert summary["images"] == 3 and summary["skipped"]["corrupt_image"] == 8
    lines = (tmp_path / "shards" / "skipped.tsv").read_text().splitlines()
    assert len(lines) == 8 and all(line.startswith("corrupt_image\t") for line in lines)
    assert {f"cat/broken{i}.jpg" for i in range(8)} <= {l.split("\t")[1].split(":")[0] for l in lines}
    assert summary["skipped_items_named"] == 8 and summary["skipped_items_file"] == "skipped.tsv"
    assert "skipped.tsv" in (tmp_path / "shards" / "card.md").read_text()
