"""``datascale selftrain``: pseudo-labels of a perfect teacher are the ground truth, a killed
pseudo-labelling resumes to identical shards (and ranks split it), the student trains through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import io

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from datascale.cli import main
from datascale.config import load_config
from datascale.formats import voc
from scaling.selftrain import pseudo as pseudo_io
from scaling.selftrain.config import SelftrainConfig
from scaling.selftrain.run import STUDENT_DIR, _pseudo_coco, pseudo_label
from scaling.tasks import get_task
from scaling.tasks.config import FinetuneConfig

import finetune_data
from finetune_data import cpu_threads  # noqa: F401 - fixture

UNLABELLED = {"detection": "images/train", "pose": "images/train", "segmentation": "JPEGImages"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return finetune_data.write_all(tmp_path_factory.mktemp("selftrain"))


def _teacher(world: Path, task: str, out: Path) -> Path:
    assert main(["-q", "finetune", "--task", task, "--init", "random", "--arch", "resnet_demo",
                 "--data", str(world / task), "--out", str(out), "--steps", "2",
                 "--set", "train.batch_size=2", "--set", "train.random_bn_batches=1"]) == 0
    return out


def _cfg(world: Path, task: str, teacher: Path | str, **pseudo) -> SelftrainConfig:
    finetune = {"task": task, "init": "random", "arch": "resnet_demo", "data": {"root": str(world / task)}}
    return load_config(SelftrainConfig, {"task": task, "teacher": str(teacher),
                                         "unlabelled": str(world / task / UNLABELLED[task]),
                                         "pseudo": {"images_per_shard": 1, **pseudo}, "finetune": finetune})


def _perfect_teacher(world: Path, task: str):
    """A stand-in teacher that returns each training image's ground truth, with score 1."""
    if task == "segmentation":
        def label(images):
            out = []
            for key, _, _, _ in images:
                mask = voc.read_mask(world / task / "SegmentationClass" / f"{key}.png", 21)
                out.append({"labels": np.where(mask == 255, 0, mask).astype(np.uint8),
                            "confidence": np.where(mask == 255, 0.0, 1.0)})
            return out
        return label
    kind = "instances" if task == "detection" else "person_keypoints"
    data = json.loads((world / task / f"annotations/{kind}_train.json").read_text())
    by_key = {Path(img["file_name"]).stem: [a for a in data["annotations"] if a["image_id"] == img["id"]]
              for img in data["images"]}

    def label(images):
        if task == "detection":
            return [[{"bbox": a["bbox"], "category_id": a["category_id"], "score": 1.0} for a in by_key[key]]
                    for key, _, _, _ in images]
        return [[{"bbox": a["bbox"], "category_id": a["category_id"],
                  "keypoints": [[x, y, 1.0 if v else 0.0] for x, y, v in zip(*[iter(a["keypoints"])] * 3)]}
                 for a in by_key[key]] for key, _, _, _ in images]
    return label, by_key


@pytest.mark.parametrize("task", ["detection", "pose"])
def test_a_perfect_teachers_coco_pseudo_labels_are_the_ground_truth(world, tmp_path, task):
    label, truth = _perfect_teacher(world, task)
    folder = pseudo_label(_cfg(world, task, "unused"), tmp_path, labeller=label)
    assert (folder / "complete.json").is_file() and len(json.loads((folder / "sizes.json").read_text())) == 4
    coco = _pseudo_coco(folder, [])
    assert sorted(img["file_name"] for img in coco.images) == sorted(truth)
    for image in coco.images:
        got, want = coco.annotations[image["id"]], truth[image["file_name"]]
        # Coordinates are stored to 0.01 px (docs/formats.md).
        assert [a["category_id"] for a in got] == [a["category_id"] for a in want]
        assert [a["bbox"] for a in got] == [pytest.approx(a["bbox"], abs=0.005) for a in want]
        if task == "pose":  # every keypoint is labelled (v = 2) in this data set
            assert [a["keypoints"] for a in got] == [pytest.approx(a["keypoints"], abs=0.005) for a in want]
            assert all(a["keypoint_scores"] == [1.0] * 5 for a in got)
        else:
            assert all(a["score"] == 1.0 for a in got)


def test_a_perfect_teachers_segmentation_pseudo_labels_are_the_ground_truth(world, tmp_path):
    folder = pseudo_label(_cfg(world, "segmentation", "unused"), tmp_path,
                          labeller=_perfect_teacher(world, "segmentation"))
    seen = 0
    for key, _, meta, extra in pseudo_io.read_pseudo(folder):
        mask = np.asarray(Image.open(io.BytesIO(extra["seg.png"])))
        truth = voc.read_mask(world / "segmentation/SegmentationClass" / f"{key}.png", 21)
        assert np.array_equal(mask, truth)  # ignore pixels (confidence 0) came back as 255
        assert meta["confident_fraction"] == pytest.approx(float((truth != 255).mean()), abs=1e-5)
        seen += 1
    assert seen == 4


@pytest.mark.slow
def test_a_killed_pseudo_labelling_resumes_to_identical_shards_and_ranks_split_it(world, tmp_path):
    teacher = _teacher(world, "segmentation", tmp_path / "teacher")
    cfg = _cfg(world, "segmentation", teacher)
    whole = pseudo_label(cfg, tmp_path / "whole")
    killed = pseudo_label(cfg, tmp_path / "killed", limit_shards=2)
    assert len(list(killed.glob("*.tar"))) == 2 and not (killed / "complete.json").exists()
    stale = killed / ".pseudo-000002.tar.x.tmp"
    stale.write_bytes(b"half a shard")  # what a kill leaves: a temporary, never a named shard
    pseudo_label(cfg, tmp_path / "killed")
    for rank in (1, 0):
        pseudo_label(cfg, tmp_path / "ranks", rank=rank, world_size=2)
    names = sorted(p.name for p in whole.glob("*.tar"))
    assert len(names) == 4
    for other in (killed, tmp_path / "ranks" / "pseudo"):
        assert (other / "complete.json").is_file()
        assert [(other / n).read_bytes() for n in names] == [(whole / n).read_bytes() for n in names]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "segmentation", "pose"])
def test_the_student_trains_through_the_cli_and_is_collected_as_selftrain(world, tmp_path, task):
    teacher = _teacher(world, task, tmp_path / "teacher")
    out = tmp_path / "student-run"
    assert main(["-q", "selftrain", "--task", task, "--teacher", str(teacher),
                 "--unlabelled", str(world / task / UNLABELLED[task]), "--out", str(out), "--steps", "2",
                 "--set", "pseudo.box_score_threshold=0.0", "--set", "pseudo.keypoint_threshold=0.0",
                 "--set", "pseudo.pixel_threshold=0.0", "--set", "finetune.train.batch_size=2",
                 "--set", "finetune.data.labelled_fraction=0.5"]) == 0
    run = out / STUDENT_DIR
    result = json.loads((run / "metrics.json").read_text())
    assert result["labelled_images"] == 2 and result["pseudo_images"] == 4
    assert set(result["metrics"]) == {"original"}
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["stage"] == "selftrain" and record["config"]["train"]["augment"] == "lsj_randaugment"
    assert record["lineage"]["init"] == "selftrain" and record["lineage"]["student_init"] == "random"
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("pseudo_") for k in losses[0])
    # The student's folder is a teacher too (model.pt); results collect reads it as init=selftrain.
    load_config(FinetuneConfig, record["config"])
    assert get_task(task).name == task and (run / "model.pt").is_file()
    table = tmp_path / "results.parquet"
    assert main(["-q", "results", "collect", str(out), str(teacher), "--out", str(table)]) == 0
    inits = set(pd.read_parquet(table)["init"])
    assert inits == {"selftrain", "random"}
