"""``datascale selftrain``: a teacher pseudo-labels unlabelled images, a student trains on both.

    datascale selftrain --task detection --teacher runs/finetune/detection/finetune/random \\
        --unlabelled study/shards --out runs/selftrain/detection/random

Zoph et al. 2020, "Rethinking Pre-training and Self-training": step A
(:mod:`scaling.selftrain.pseudo`) writes ``OUT/pseudo/`` (shards, its own
config.yaml and complete.json); step B trains the student in ``OUT/student/``
with the one fine-tuning loop (:mod:`scaling.finetune.loop`), each step a
labelled batch plus a pseudo-labelled batch, both through the student's
``train.augment``, and evaluates it exactly as ``datascale finetune`` does:
the same metrics.json, with lineage ``init: selftrain`` (the student's own
starting point is ``student_init``), so ``datascale results collect`` puts
it beside the random and pretrained runs.

Memory (step B): the pseudo-labelled images are held encoded in memory (and
decoded once with ``data.cache_images``): demo-sized unlabelled sets only.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from datascale.errors import DataError
from datascale.lineage import config_record, mark_complete, prepare_output_dir, sha256_file
from scaling.finetune.loop import PseudoData, choose_threads, run_finetune
from scaling.selftrain import pseudo as pseudo_io
from scaling.selftrain.config import SelftrainConfig
from scaling.selftrain.teacher import load_teacher, teacher_labeller
from scaling.tasks.augment import Augment, flip_pairs
from scaling.tasks.coco_data import CocoSet
from scaling.tasks.common import EncodedImage
from scaling.tasks.detection import DetectionDataset
from scaling.tasks.pose import PoseDataset
from scaling.tasks.segmentation import SegmentationDataset, VocSet

log = logging.getLogger(__name__)

PSEUDO_DIR = "pseudo"
STUDENT_DIR = "student"


# --------------------------------------------------------------------------- step A


def pseudo_record(cfg: SelftrainConfig, source, stand_in: bool = False) -> dict:
    """The lineage of OUT/pseudo: the teacher's weights (or a test's stand-in), the input's pin and
    the thresholds."""
    teacher = Path(cfg.teacher)
    inputs = {} if stand_in else {"teacher_model": teacher / "model.pt", "teacher_config": teacher / "config.yaml"}
    return config_record("pseudolabel", {"task": cfg.task, "pseudo": cfg.pseudo}, inputs,
                         extra={"teacher": "stand-in" if stand_in else str(teacher.resolve()),"unlabelled": str(Path(cfg.unlabelled).resolve()),
                                "unlabelled_pin": hashlib.sha256(source.pin().encode()).hexdigest()})


def pseudo_label(cfg: SelftrainConfig, out: Path, *, rank: int = 0, world_size: int = 1, force: bool = False,
                 labeller=None, limit_shards: int | None = None) -> Path:
    """Step A into ``out/pseudo``; returns that folder. ``labeller`` replaces the teacher (tests)."""
    folder = out / PSEUDO_DIR
    source = pseudo_io.open_unlabelled(cfg.unlabelled, cfg.pseudo.images_per_shard)
    state = prepare_output_dir(folder, pseudo_record(cfg, source, labeller is not None), force=force)
    if state == "complete":
        log.info("%s is complete for this teacher and config", folder)
        return folder
    if labeller is None:
        teacher = load_teacher(cfg.teacher)
        if teacher.cfg.task != cfg.task:
            raise DataError(f"the teacher {cfg.teacher} was trained on {teacher.cfg.task}, not {cfg.task}")
        labeller = teacher_labeller(teacher)
    stats = pseudo_io.write_pseudo_shards(source, folder, labeller, cfg.task, cfg.pseudo, rank=rank,
                                          world_size=world_size, limit_shards=limit_shards)
    log.info("rank %d: %d pseudo shards written, %d images", rank, stats["shards_written"], stats["images"])
    if pseudo_io.finish_if_done(source, folder, cfg.pseudo):
        mark_complete(folder, {"skipped": stats["skipped"]})
    return folder


# --------------------------------------------------------------------------- step B


def _pseudo_coco(folder: Path, categories: list[dict]) -> CocoSet:
    images, annotations = [], {}
    for index, (key, data, meta, _) in enumerate(pseudo_io.read_pseudo(folder)):
        images.append({"id": index, "file_name": key, "path": EncodedImage(key, data),
                       "width": meta["width"], "height": meta["height"]})
        annotations[index] = [dict(a, iscrowd=0, area=a["bbox"][2] * a["bbox"][3]) for a in meta["annotations"]]
    return CocoSet(folder, images, annotations, categories, {}, collections.Counter())


def pseudo_dataset(task, cfg, train_set, folder: Path):
    """The pseudo-labelled images as a training set of ``task`` (items as its labelled set's)."""
    augment = Augment(cfg.train)
    if task.name == "detection":
        return DetectionDataset(_pseudo_coco(folder, train_set.coco.categories), cfg.data.image_size,
                                cfg.data.cache_images, augment)
    if task.name == "pose":
        categories = train_set.coco.categories
        names = next(c for c in categories if isinstance(c.get("keypoints"), list))["keypoints"]
        return PoseDataset(_pseudo_coco(folder, categories), cfg.pose, cfg.data.cache_images,
                           Augment(cfg.train, flip_pairs(names)))
    voc = VocSet(folder, [], [], [], train_set.voc.class_names)
    for key, data, _, extra in pseudo_io.read_pseudo(folder):
        voc.ids.append(key)
        voc.images.append(EncodedImage(key, data))
        voc.masks.append(EncodedImage(f"{key}.seg.png", extra["seg.png"]))
    return SegmentationDataset(voc, cfg.data.image_size, cfg.data.cache_images, augment)


def train_student(cfg: SelftrainConfig, out: Path, *, force: bool = False) -> dict:
    """Step B into ``out/student``; returns its metrics.json content."""
    folder = out / PSEUDO_DIR
    if not (folder / "complete.json").is_file():
        raise DataError(f"{folder} is not complete: run step A (--step pseudo) on every rank first")
    student = cfg.student
    batch = max(1, round(student.pseudo_ratio * cfg.finetune.train.batch_size))

    def pseudo_data(task, finetune_cfg, train_set):
        dataset = pseudo_dataset(task, finetune_cfg, train_set, folder)
        if len(dataset) == 0:
            raise DataError(f"{folder}: no pseudo-labelled sample is usable for training "
                            "(lower the pseudo thresholds, or check the teacher)")
        return PseudoData(dataset, batch, student.pseudo_weight, student.loss_normalisation)

    teacher = Path(cfg.teacher)
    lineage = {"init": "selftrain", "student_init": cfg.finetune.init, "teacher_run": str(teacher.resolve()),
               "teacher_sha256": sha256_file(teacher / "model.pt"), "pseudo_ratio": student.pseudo_ratio,
               "pseudo_weight": student.pseudo_weight}
    return run_finetune(cfg.finetune, out / STUDENT_DIR, force=force, stage="selftrain",
                        extra={"selftrain": {"pseudo": cfg.pseudo, "student": student,
                                             "unlabelled": cfg.unlabelled}, "lineage": lineage},
                        extra_inputs={"pseudo_sizes": folder / "sizes.json"}, pseudo_data=pseudo_data)


def run_selftrain(cfg: SelftrainConfig, out: str | Path, *, step: str = "all", rank: int = 0,
                  world_size: int = 1, force: bool = False) -> dict | None:
    """Step A (``pseudo``), step B (``student``) or both (``all``); returns metrics.json for B."""
    out = Path(out)
    torch.set_num_threads(choose_threads(cfg.finetune.train.threads))
    np.random.seed(cfg.finetune.seed)
    if step in ("all", "pseudo"):
        pseudo_label(cfg, out, rank=rank, world_size=world_size, force=force)
    if step in ("all", "student"):
        return train_student(cfg, out, force=force)
    return None
