"""The dedup audit and fine-tuning read a test set through one reader per format, so they see the same images.

Before the readers were shared, the audit looked only for JPEGImages/ID.jpg
while fine-tuning accepted .jpg/.jpeg/.png: a VOC set stored as PNG was
reported unreadable by the audit, kept whole in clean/, and fine-tuning then
scored a "de-duplicated" set nobody had checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from data_tools.dedup.testsets import open_testset
from datascale.errors import DataError
from datascale.formats import coco, voc
from finetune_data import write_coco, write_voc
from scaling.tasks.coco_data import read_coco
from scaling.tasks.segmentation import read_voc


def _as_png(root: Path) -> None:
    """Store every VOC image as PNG (the masks already are)."""
    for jpg in (root / "JPEGImages").glob("*.jpg"):
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()


def test_png_voc_set_audit_and_finetuning_read_the_same_image_files(tmp_path):
    root = write_voc(tmp_path / "segmentation")
    _as_png(root)
    test_list = root / "ImageSets" / "Segmentation" / "test.txt"
    audited = open_testset(test_list)
    trained = read_voc(test_list, root / "JPEGImages", voc.read_class_names(root))
    assert [im.path for im in audited.images] == trained.images
    assert all(p.suffix == ".png" for p in trained.images)
    # The audit can read every one of them: none would be kept unchecked in clean/.
    assert all(audited.read(im)[:8] == b"\x89PNG\r\n\x1a\n" for im in audited.images)


def test_mixed_extensions_resolve_by_one_rule(tmp_path):
    root = write_voc(tmp_path / "segmentation")
    photo = root / "JPEGImages" / "photo.jpg"
    Image.open(photo).save(photo.with_suffix(".jpeg"))
    photo.unlink()
    test_list = root / "ImageSets" / "Segmentation" / "test.txt"
    audited = {im.test_id: im.path for im in open_testset(test_list).images}
    read = read_voc(test_list, root / "JPEGImages", voc.read_class_names(root))
    trained = dict(zip(read.ids, read.images))
    assert audited == trained
    assert audited["photo"].name == "photo.jpeg"


@pytest.mark.parametrize("kind", ["detection", "keypoints"])
def test_coco_set_audit_and_finetuning_read_the_same_image_files(tmp_path, kind):
    root = write_coco(tmp_path / "coco", kind)
    stem = "instances" if kind == "detection" else "person_keypoints"
    test_json = root / "annotations" / f"{stem}_test.json"
    audited = open_testset(test_json)
    trained = read_coco(test_json, root / "images" / "test", kind)
    assert [(im.test_id, im.path) for im in audited.images] == [(str(r["id"]), r["path"]) for r in trained.images]
    assert coco.find_images_dir(test_json, coco.load_coco(test_json)["images"]) == root / "images" / "test"


def test_one_coco_reader_refuses_the_same_broken_files_for_both(tmp_path):
    root = write_coco(tmp_path / "coco")
    test_json = root / "annotations" / "instances_test.json"
    test_json.write_text('{"images": [{"id": 1, "file_name": "photo.jpg"}, {"id": 1, "file_name": "mirror.jpg"}],'
                         ' "annotations": [], "categories": []}')
    with pytest.raises(DataError, match="image id 1 appears twice"):
        open_testset(test_json)
    with pytest.raises(DataError, match="image id 1 appears twice"):
        read_coco(test_json, root / "images" / "test")
