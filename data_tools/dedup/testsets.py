"""Downstream test sets in their own formats: read them, and write them back without duplicates.

Kinds (registry :data:`TESTSET_KINDS`, picked by :func:`detect_kind`):

* ``coco``: a COCO JSON (detection or keypoints); test id = image ``id``;
  images under ``DATASET/images/SPLIT/`` (or beside the JSON). Cleaned:
  the same JSON without the removed images and their annotations.
* ``voc``: a VOC image list (``ImageSets/Segmentation/test.txt``); test id =
  the line; images in ``JPEGImages/ID.jpg`` (or .jpeg, .png: the rule of
  :mod:`datascale.formats.voc`). Cleaned: the list without them.
* ``folder``: every image file under a folder; test id = relative path.
  Cleaned: a folder of the kept images (hard links where possible).
* ``shards``: a WebDataset shards folder; test id = sample key. Cleaned:
  shards without the removed samples (+ sizes.json, manifest.parquet).

A test set spec is ``PATH`` or ``NAME=PATH``; the default name is
``DATASET_SPLIT`` (``detection_test``) where the layout tells, else the
file or folder name.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from datascale.atomic import atomic_path, write_json
from datascale.errors import DataError
from datascale.formats import coco, voc
from datascale.formats.wds import iter_shard_samples, write_tar

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
CLEAN_DIR = "clean"


@dataclass
class TestImage:
    """One test image: its id in the test set's own terms, a readable name, where its bytes are."""

    __test__ = False  # not a pytest test class despite the name

    test_id: str
    name: str
    path: Path | None = None


@dataclass
class TestSet:
    """A test set: its images in order, plus what is needed to write a cleaned copy."""

    __test__ = False

    name: str
    kind: str
    source: Path
    images: list[TestImage]
    dataset: str | None = None
    split: str | None = None
    payload: dict = field(default_factory=dict)   # kind-specific (COCO dict, shard bytes)

    def read(self, image: TestImage) -> bytes:
        """Encoded bytes of ``image``; OSError if its file is missing or unreadable."""
        if image.path is not None:
            return image.path.read_bytes()
        return self.payload["bytes"][image.test_id]

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "path": str(self.source.resolve()),
                "dataset": self.dataset, "split": self.split, "images": len(self.images)}

    def write_clean(self, removed: set[str], out_dir: Path) -> dict:
        """Write the test set without the ``removed`` test ids under ``out_dir/clean/``.

        Returns ``{"path", "images_kept", "images_removed", ...}``.
        """
        target = Path(out_dir) / CLEAN_DIR
        target.mkdir(parents=True, exist_ok=True)
        info = TESTSET_KINDS[self.kind].clean(self, removed, target)
        kept = sum(1 for im in self.images if im.test_id not in removed)
        return {"images_kept": kept, "images_removed": len(self.images) - kept, **info}


# --------------------------------------------------------------------------- COCO


def read_coco(path: Path) -> TestSet:
    """A COCO JSON test set (images + annotations); DataError if it is not COCO."""
    data = coco.load_coco(path, required=("images",))
    split, dataset = coco.split_of(path), coco.dataset_dir(path).name
    records = data["images"]
    base = coco.find_images_dir(path, records) if records else path.parent
    images = [TestImage(str(r["id"]), str(r["file_name"]), coco.image_path(base, r)) for r in records]
    return TestSet(f"{dataset}_{split}", "coco", path, images, dataset, split, {"coco": data})


def clean_coco(testset: TestSet, removed: set[str], target: Path) -> dict:
    """The COCO JSON without the removed images and their annotations (other keys kept)."""
    out = target / testset.source.name
    dropped = coco.write_coco_without(testset.payload["coco"], removed, out)
    return {"path": str(out), "annotations_removed": dropped}


# --------------------------------------------------------------------------- VOC lists


def read_voc(path: Path) -> TestSet:
    """A VOC image list; each id's image is ROOT/JPEGImages/ID.jpg|.jpeg|.png, ROOT found above the list.

    An id without an image file keeps the .jpg path, so the audit reports it unreadable.
    """
    ids = voc.read_image_list(path)
    images_dir = voc.find_root(path) / voc.IMAGES_DIR
    images = []
    for image_id in ids:
        file = voc.image_path(images_dir, image_id) or images_dir / f"{image_id}.jpg"
        images.append(TestImage(image_id, f"{voc.IMAGES_DIR}/{file.name}", file))
    root = images_dir.parent
    return TestSet(f"{root.name}_{path.stem}", "voc", path, images, root.name, path.stem)


def clean_voc(testset: TestSet, removed: set[str], target: Path) -> dict:
    """The image list without the removed ids."""
    out = target / testset.source.name
    voc.write_image_list(out, [im.test_id for im in testset.images if im.test_id not in removed])
    return {"path": str(out)}


# --------------------------------------------------------------------------- folders


def read_folder(path: Path) -> TestSet:
    """Every image file below ``path`` (sorted); test ids are relative paths."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    images = [TestImage(p.relative_to(path).as_posix(), p.relative_to(path).as_posix(), p) for p in files]
    return TestSet(path.name, "folder", path, images)


def clean_folder(testset: TestSet, removed: set[str], target: Path) -> dict:
    """A copy of the folder (hard links where possible) without the removed images."""
    out = target / testset.source.name
    if out.exists():
        shutil.rmtree(out)
    for image in testset.images:
        if image.test_id in removed:
            continue
        dest = out / image.test_id
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(image.path, dest)          # no copy where the filesystem allows
        except OSError:
            shutil.copyfile(image.path, dest)
    return {"path": str(out)}


# --------------------------------------------------------------------------- shards


def read_shards(path: Path) -> TestSet:
    """A folder of WebDataset tars as a test set; the (small) test images are held in memory."""
    tars = sorted(path.glob("*.tar"))
    skipped: collections.Counter = collections.Counter()
    images, data, members = [], {}, {}
    for sample in iter_shard_samples(tars, skipped=skipped):
        images.append(TestImage(sample.key, f"{sample.shard}:{sample.key}.{sample.ext}"))
        data[sample.key] = sample.image
        members[sample.key] = (sample.shard, sample.ext, sample.meta)
    if skipped:
        log.warning("%s: damaged samples skipped while reading the test set: %s", path, dict(skipped))
    return TestSet(path.name, "shards", path, images,
                   payload={"bytes": data, "members": members, "skipped": dict(skipped)})


def clean_shards(testset: TestSet, removed: set[str], target: Path) -> dict:
    """The tars without the removed samples, with sizes.json and a filtered manifest.parquet."""
    out = target / testset.source.name
    out.mkdir(parents=True, exist_ok=True)
    by_shard: dict[str, list] = {}
    for image in testset.images:
        shard, ext, meta = testset.payload["members"][image.test_id]
        rows = by_shard.setdefault(shard, [])
        if image.test_id not in removed:
            rows.append((image.test_id, ext, testset.payload["bytes"][image.test_id], meta))
    sizes = {}
    for shard, rows in sorted(by_shard.items()):
        with atomic_path(out / shard) as tmp:
            sizes[shard] = write_tar(tmp, rows)
    write_json(out / "sizes.json", sizes)
    manifest = testset.source / "manifest.parquet"
    if manifest.is_file():
        import pandas as pd
        table = pd.read_parquet(manifest)
        with atomic_path(out / "manifest.parquet") as tmp:
            table[~table["key"].astype(str).isin(removed)].to_parquet(tmp, index=False)
    return {"path": str(out)}


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TestSetKind:
    """A test set format: how to read it and how to write the cleaned copy."""

    read: Callable[[Path], TestSet]
    clean: Callable[[TestSet, set[str], Path], dict]


TESTSET_KINDS: dict[str, TestSetKind] = {
    "coco": TestSetKind(read_coco, clean_coco),
    "voc": TestSetKind(read_voc, clean_voc),
    "folder": TestSetKind(read_folder, clean_folder),
    "shards": TestSetKind(read_shards, clean_shards),
}


def detect_kind(path: Path) -> str:
    """coco (.json), voc (.txt), shards (a folder with .tar files) or folder (other folders)."""
    if path.is_dir():
        return "shards" if any(path.glob("*.tar")) else "folder"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "coco"
    if suffix == ".txt":
        return "voc"
    raise DataError(f"{path}: not a test set; give a COCO .json, a VOC .txt image list, "
                    "an image folder or a shards folder")


def open_testset(spec: str | Path) -> TestSet:
    """Read a test set from ``PATH`` or ``NAME=PATH``; DataError if missing, unknown or empty."""
    text = str(spec)
    name, sep, location = text.partition("=")
    if not sep or os.path.exists(text):
        name, location = "", text
    path = Path(location)
    if not path.exists():
        raise DataError(f"test set not found: {path}")
    testset = TESTSET_KINDS[detect_kind(path)].read(path)
    if name:
        testset.name = name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", testset.name):
        raise DataError(f"test set name {testset.name!r} cannot be a folder name; "
                        "name it with --testset NAME=PATH (letters, digits, _ . -)")
    if not testset.images:
        raise DataError(f"test set {testset.name} ({path}) has no images; nothing to audit")
    return testset
