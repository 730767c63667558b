"""Test-set readers and cleaned writers: COCO, VOC lists, image folders, shards."""

import io
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from datascale.errors import DataError
from data_tools.dedup.testsets import detect_kind, open_testset
from datascale.formats.wds import write_tar
from data_tools.shards.write import iter_shard_samples


def _jpeg(seed: int) -> bytes:
    photo = skimage.data.chelsea()
    buffer = io.BytesIO()
    Image.fromarray(photo[seed * 10:seed * 10 + 64, seed * 12:seed * 12 + 64]).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_coco_reader_finds_images_and_cleaning_drops_their_annotations(tmp_path):
    root = tmp_path / "pose"
    (root / "images" / "test").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in (1, 2, 3):
        (root / "images" / "test" / f"{i:06d}.jpg").write_bytes(_jpeg(i))
    coco = {"info": {"v": 1}, "categories": [{"id": 1, "name": "person", "keypoints": ["a"]}],
            "images": [{"id": i, "file_name": f"{i:06d}.jpg"} for i in (1, 2, 3)],
            "annotations": [{"id": 10 * i + j, "image_id": i, "category_id": 1} for i in (1, 2, 3) for j in (0, 1)]}
    path = root / "annotations" / "person_keypoints_test.json"
    path.write_text(json.dumps(coco))
    testset = open_testset(path)
    assert (testset.name, testset.kind, testset.dataset, testset.split) == ("pose_test", "coco", "pose", "test")
    assert [im.test_id for im in testset.images] == ["1", "2", "3"]
    assert testset.read(testset.images[1]) == _jpeg(2)
    info = testset.write_clean({"2"}, tmp_path / "out")
    cleaned = json.loads((tmp_path / "out" / "clean" / path.name).read_text())
    assert [im["id"] for im in cleaned["images"]] == [1, 3]
    assert sorted(a["image_id"] for a in cleaned["annotations"]) == [1, 1, 3, 3]
    assert cleaned["info"] == coco["info"] and cleaned["categories"] == coco["categories"]
    assert info["images_kept"] == 2 and info["images_removed"] == 1 and info["annotations_removed"] == 2


def test_coco_without_its_images_is_an_error_naming_where_it_looked(tmp_path):
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": []}))
    with pytest.raises(DataError, match="cannot find its images"):
        open_testset(path)


def test_voc_list_reader_and_cleaned_list(tmp_path):
    root = tmp_path / "segmentation"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ("s1", "s2", "s3"):
        (root / "JPEGImages" / f"{name}.jpg").write_bytes(_jpeg(int(name[1])))
    path = root / "ImageSets" / "Segmentation" / "test.txt"
    path.write_text("s1\ns2\n\ns3\n")
    testset = open_testset(f"seg={path}")
    assert testset.name == "seg" and testset.kind == "voc" and testset.split == "test"
    assert [im.test_id for im in testset.images] == ["s1", "s2", "s3"]
    testset.write_clean({"s1", "s3"}, tmp_path / "out")
    assert (tmp_path / "out" / "clean" / "test.txt").read_text() == "s2\n"


def test_folder_reader_and_cleaned_folder(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "a.jpg").write_bytes(_jpeg(1))
    (tmp_path / "imgs" / "sub" / "b.png").write_bytes(_jpeg(2))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    testset = open_testset(tmp_path / "imgs")
    assert detect_kind(tmp_path / "imgs") == "folder"
    assert [im.test_id for im in testset.images] == ["a.jpg", "sub/b.png"]
    testset.write_clean({"a.jpg"}, tmp_path / "out")
    kept = sorted(p.relative_to(tmp_path / "out" / "clean" / "imgs").as_posix()
                  for p in (tmp_path / "out" / "clean" / "imgs").rglob("*") if p.is_file())
    assert kept == ["sub/b.png"]


def test_shards_reader_and_cleaned_shards_stay_readable(tmp_path):
    import pandas as pd
    shards = tmp_path / "test_shards"
    shards.mkdir()
    samples = [(f"k{i}", "jpg", _jpeg(i), {"labels": [i]}) for i in range(5)]
    write_tar(shards / "shard-000000.tar", samples[:3])
    write_tar(shards / "shard-000001.tar", samples[3:])
    pd.DataFrame({"key": [f"k{i}" for i in range(5)], "rank": np.linspace(0, 1, 5)}) \
        .to_parquet(shards / "manifest.parquet")
    testset = open_testset(shards)
    assert testset.kind == "shards" and [im.test_id for im in testset.images] == [f"k{i}" for i in range(5)]
    testset.write_clean({"k1", "k4"}, tmp_path / "out")
    out = tmp_path / "out" / "clean" / "test_shards"
    read = list(iter_shard_samples(sorted(out.glob("*.tar"))))
    assert [s.key for s in read] == ["k0", "k2", "k3"]
    assert read[1].image == _jpeg(2) and read[1].meta == {"labels": [2]}
    assert json.loads((out / "sizes.json").read_text()) == {"shard-000000.tar": 2, "shard-000001.tar": 1}
    assert list(pd.read_parquet(out / "manifest.parquet")["key"]) == ["k0", "k2", "k3"]


def test_specs_that_are_not_test_sets_are_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_testset(tmp_path / "missing.json")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="not a test set"):
        open_testset(tmp_path / "x.csv")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(_jpeg(1))
    with pytest.raises(DataError, match="cannot be a folder name"):
        open_testset(f"../up={tmp_path / 'imgs'}")
