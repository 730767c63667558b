"""Step A of self-training: the teacher pseudo-labels unlabelled images into WebDataset shards.

Input: a shards or subset folder (read shard by shard, as the dedup pool is)
or a folder of images (sorted by path, cut into ``pseudo.images_per_shard``).
Pseudo shard ``i`` holds the labels of input shard ``i``: ``pseudo-%06d.tar``
with ``KEY.<jpg|png|webp>`` (the image bytes as given), ``KEY.json`` (the
labels above the thresholds, with their scores) and, for segmentation,
``KEY.seg.png`` (hard labels, 255 below ``pseudo.pixel_threshold``) and
``KEY.conf.png`` (the top class probability x 255). docs/formats.md has the
fields.

Resumable and splittable like the dedup embedding step: rank ``r`` of ``w``
labels the shards ``i % w == r``; each shard is written to a temporary name
and renamed when finished, so a killed run loses at most the shard in
progress and a rerun skips finished shards. The teacher runs in eval mode
and the tars are byte-for-byte deterministic, so a resumed run writes the
same shards as an uninterrupted one. Memory: one input shard's images.
"""

from __future__ import annotations

import collections
import io
import json
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from datascale.atomic import atomic_path, write_json
from datascale.errors import DataError
from datascale.formats import wds
from datascale.lineage import sha256_file
from data_tools.dedup.pool import open_pool
from scaling.selftrain.config import PseudoSection
from scaling.tasks.common import EncodedImage, image_size_of

log = logging.getLogger(__name__)

SHARD_PATTERN = "pseudo-{:06d}.tar"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


# --------------------------------------------------------------------------- the unlabelled images


class ImageFolder:
    """Every image under a folder, sorted by relative path, in shards of ``per_shard``."""

    def __init__(self, root: Path, per_shard: int) -> None:
        self.root = root
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) and no sizes.json or subset.json; "
                            "give a shards folder, a subset folder or a folder of images")
        self.per_shard = per_shard

    @property
    def num_shards(self) -> int:
        return -(-len(self.files) // self.per_shard)

    def iter_shard(self, index: int, skipped: collections.Counter) -> Iterator[tuple[str, bytes]]:
        for path in self.files[index * self.per_shard:(index + 1) * self.per_shard]:
            relative = path.relative_to(self.root).with_suffix("").as_posix()
            yield relative.replace(".", "_"), path.read_bytes()

    def pin(self) -> str:
        """What pins the input: the sorted relative paths and sizes (hashed into the lineage)."""
        return "\n".join(f"{p.relative_to(self.root)}\t{p.stat().st_size}" for p in self.files)


class ShardFolder:
    """A shards or subset folder, through the dedup pool reader (one input shard per pseudo shard)."""

    def __init__(self, root: Path) -> None:
        self.pool = open_pool(root)

    @property
    def num_shards(self) -> int:
        return self.pool.num_shards

    def iter_shard(self, index: int, skipped: collections.Counter) -> Iterator[tuple[str, bytes]]:
        for sample in self.pool.iter_shard(index, skipped):
            yield sample.key, sample.image

    def pin(self) -> str:
        return sha256_file(self.pool.pin_file())


def open_unlabelled(path: str | Path, per_shard: int):
    """A :class:`ShardFolder` when ``path`` holds sizes.json or subset.json, else an :class:`ImageFolder`."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"unlabelled images not found: {path}; give a shards, subset or image folder")
    if (path / "sizes.json").is_file() or (path / "subset.json").is_file():
        return ShardFolder(path)
    return ImageFolder(path, per_shard)


# --------------------------------------------------------------------------- encoding the labels


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def encode_labels(task: str, raw, cfg: PseudoSection, width: int, height: int) -> tuple[dict, dict[str, bytes]]:
    """(KEY.json content, extra members) of one image's raw teacher output, thresholds applied."""
    meta: dict = {"task": task, "width": width, "height": height}
    if task == "detection":
        kept = [d for d in raw if d["score"] >= cfg.box_score_threshold]
        meta["annotations"] = [{"bbox": [round(float(v), 2) for v in d["bbox"]],
                                "category_id": int(d["category_id"]), "score": round(float(d["score"]), 5)}
                               for d in kept]
        return meta, {}
    if task == "segmentation":
        confident = raw["confidence"] >= cfg.pixel_threshold
        labels = np.where(confident, raw["labels"], 255)
        meta["confident_fraction"] = round(float(confident.mean()), 5)
        conf = np.round(np.clip(raw["confidence"], 0, 1) * 255)
        return meta, {"seg.png": _png(labels), "conf.png": _png(conf)}
    people = []
    for person in raw:
        points = [[round(float(x), 2), round(float(y), 2), 2 if s >= cfg.keypoint_threshold else 0]
                  for x, y, s in person["keypoints"]]
        people.append({"bbox": [float(v) for v in person["bbox"]], "category_id": int(person["category_id"]),
                       "keypoints": [v for p in points for v in p],
                       "keypoint_scores": [round(float(s), 5) for _, _, s in person["keypoints"]],
                       "num_keypoints": sum(1 for p in points if p[2] > 0)})
    meta["annotations"] = people
    return meta, {}


# --------------------------------------------------------------------------- writing shards


def _shard_samples(source, index: int, labeller: Callable, task: str, cfg: PseudoSection,
                   skipped: collections.Counter, budget: int | None):
    """The samples of pseudo shard ``index``: (key, ext, image bytes, meta, extra members)."""
    batch: list = []
    for count, (key, data) in enumerate(source.iter_shard(index, skipped)):
        if budget is not None and count >= budget:
            break
        try:
            data, ext, _ = wds.check_image(data)
        except wds.ImageCheckError as exc:
            skipped["undecodable_image"] += 1
            log.warning("shard %d: %s: %s", index, key, exc)
            continue
        image = EncodedImage(key, data)
        width, height = image_size_of(image.open())
        batch.append((key, image, width, height, ext))
        if len(batch) == cfg.batch_size:
            yield from _label_batch(batch, labeller, task, cfg)
            batch = []
    if batch:
        yield from _label_batch(batch, labeller, task, cfg)


def _label_batch(batch: list, labeller: Callable, task: str, cfg: PseudoSection):
    raw = labeller([(key, image, w, h) for key, image, w, h, _ in batch])
    for (key, image, w, h, ext), prediction in zip(batch, raw):
        meta, extra = encode_labels(task, prediction, cfg, w, h)
        yield key, ext, image.data, meta, extra


def shard_path(out: Path, index: int) -> Path:
    return out / SHARD_PATTERN.format(index)


def write_pseudo_shards(source, out: Path, labeller: Callable, task: str, cfg: PseudoSection, *,
                        rank: int = 0, world_size: int = 1, limit_shards: int | None = None) -> dict:
    """Label this rank's unfinished shards of ``source`` into ``out``; returns counts for this call.

    ``limit_shards`` stops after that many shards (tests use it to interrupt a run).
    ``pseudo.max_images`` caps the images over all shards (input order), so every
    rank computes the same per-shard budgets.
    """
    out.mkdir(parents=True, exist_ok=True)
    budgets = _budgets(source, cfg.max_images)
    mine = [i for i in range(rank, source.num_shards, world_size) if budgets.get(i, 1) != 0]
    todo = [i for i in mine if not shard_path(out, i).is_file()][:limit_shards]
    log.info("rank %d/%d: %d of its %d pseudo shards to write", rank, world_size, len(todo), len(mine))
    stats = {"shards_written": 0, "images": 0, "skipped": collections.Counter()}
    for index in tqdm(todo, desc=f"pseudo-label (rank {rank})", unit="shard", disable=None):
        with atomic_path(shard_path(out, index)) as tmp:
            count = wds.write_tar(tmp, _shard_samples(source, index, labeller, task, cfg, stats["skipped"],
                                                      budgets.get(index)))
        stats["shards_written"] += 1
        stats["images"] += count
    stats["skipped"] = dict(stats["skipped"])
    return stats


def _budgets(source, max_images: int) -> dict[int, int]:
    """{shard: images to label} when ``max_images`` caps them (shards past the cap get 0)."""
    if not max_images:
        return {}
    sizes = [source.pool.shard_samples(i) if isinstance(source, ShardFolder)
             else len(source.files[i * source.per_shard:(i + 1) * source.per_shard])
             for i in range(source.num_shards)]
    left, budgets = max_images, {}
    for index, size in enumerate(sizes):
        budgets[index] = min(size, left)
        left -= budgets[index]
    return budgets


def expected_shards(source, max_images: int) -> list[int]:
    """The shard numbers a finished pseudo folder holds."""
    budgets = _budgets(source, max_images)
    return [i for i in range(source.num_shards) if budgets.get(i, 1) != 0]


def finish_if_done(source, out: Path, cfg: PseudoSection) -> bool:
    """When every shard exists, write ``sizes.json`` and ``urls.txt`` (plain webdataset reads them)."""
    shards = [shard_path(out, i) for i in expected_shards(source, cfg.max_images)]
    if not all(p.is_file() for p in shards):
        return False
    sizes = {p.name: sum(1 for _ in wds.iter_member_groups(p)) for p in shards}
    write_json(out / "sizes.json", sizes)
    with atomic_path(out / "urls.txt") as tmp:
        tmp.write_text("".join(f"{p.resolve()}\n" for p in shards), encoding="utf-8")
    return True


# --------------------------------------------------------------------------- reading them back


def read_pseudo(out: Path) -> Iterator[tuple[str, bytes, dict, dict[str, bytes]]]:
    """(key, image bytes, meta, {extra ext: bytes}) of every sample of a finished pseudo folder."""
    sizes = json.loads((out / "sizes.json").read_text(encoding="utf-8"))
    for name in sorted(sizes):
        for key, members in wds.iter_member_groups(out / name):
            by_ext = {wds.split_member(member)[1]: data for member, data in members}
            image_ext = next((e for e in wds.IMAGE_MEMBER_EXTS if e in by_ext), None)
            if image_ext is None or "json" not in by_ext:
                raise DataError(f"{out / name}: sample {key!r} lacks its image or JSON member")
            meta = json.loads(by_ext.pop("json").decode("utf-8"))
            yield key, by_ext.pop(image_ext), meta, by_ext
