"""Fine-tuning on the tiny synthetic world: every task through the CLI, and pretraining helps.

The pretrained backbone comes from a plain PyTorch multi-label loop over the
world's pretraining images, run here (the DeepSpeed trainer is not needed to
check the downstream side), exported with save_backbone.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from datascale.cli import main
from scaling.models.backbones import IMAGE_MEAN, IMAGE_STD, MultiLabelClassifier, build_backbone
from scaling.models.files import save_backbone

from finetune_data import cpu_threads  # noqa: F401  (autouse fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    assert main(["-q", "synth", "--config", "world/tiny", "--out", str(root / "world")]) == 0
    return root / "world"


@pytest.fixture(scope="module")
def cleaned(world, tmp_path_factory):
    """Cleaned test sets without the planted duplicates (what the dedup audit hands over)."""
    out = tmp_path_factory.mktemp("cleaned")
    with open(world / "duplicates" / "planted.csv", newline="") as handle:
        planted = list(csv.DictReader(handle))
    removed = {task: {row["test_id"] for row in planted if row["dataset"] == task and row["split"] == "test"}
               for task in ("detection", "segmentation", "pose")}
    for task, stem in (("detection", "instances"), ("pose", "person_keypoints")):
        coco = json.loads((world / task / "annotations" / f"{stem}_test.json").read_text())
        keep = [img for img in coco["images"] if str(img["id"]) not in removed[task]]
        ids = {img["id"] for img in keep}
        coco.update(images=keep, annotations=[a for a in coco["annotations"] if a["image_id"] in ids])
        (out / f"{task}.json").write_text(json.dumps(coco))
    ids = (world / "segmentation/ImageSets/Segmentation/test.txt").read_text().split()
    (out / "segmentation.txt").write_text("\n".join(i for i in ids if i not in removed["segmentation"]))
    return out, {task: len(ids) for task, ids in removed.items()}


def _pretrain(world, out, steps=100):
    """A resnet_demo multi-label classifier on the world's (noisy) pretraining labels, closed over
    ancestors, with sigmoid cross-entropy; ~100 steps of 64 images at 64 px."""
    classes = json.loads((world / "classes.json").read_text())
    parent = {c["id"]: c["parent"] for c in classes}
    rows = [json.loads(line) for line in (world / "pretrain/labels.jsonl").read_text().splitlines()]
    images = torch.stack([torch.from_numpy(np.array(Image.open(world / "pretrain" / r["image"]).convert("RGB")))
                          .permute(2, 0, 1) for r in rows])
    targets = torch.zeros(len(rows), len(classes))
    for i, row in enumerate(rows):
        for label in row["labels"]:
            while label is not None:
                targets[i, label], label = 1.0, parent[label]
    mean, std = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = MultiLabelClassifier(build_backbone("resnet_demo"), len(classes), prior=0.01)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(steps):
        batch = torch.randint(0, len(rows), (64,))
        logits = model((images[batch].float() / 255 - mean) / std)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_backbone(model, out, {"num_classes": len(classes), "classes_file": str(world / "classes.json"),
                               "lineage": {"pretrain_run": str(out), "subset_name": "all", "subset_images": len(rows)}})
    return out


def _run(world, out, task, *extra):
    assert main(["-q", "finetune", "--task", task, "--data", str(world / task), "--out", str(out),
                 *extra]) == 0
    return json.loads((out / "metrics.json").read_text())["metrics"]


@pytest.mark.parametrize("task", ["detection", "pose"])
def test_each_task_runs_on_the_world_with_its_cleaned_test_set(world, cleaned, tmp_path, task):
    folder, removed = cleaned
    assert removed[task] > 0
    metrics = _run(world, tmp_path / task, task, "--mode", "frozen", "--init", "random", "--steps", "6",
                   "--cleaned-test", str(folder / f"{task}.json"))
    assert set(metrics) == {"original", "cleaned"}
    assert set(metrics["cleaned"]) == {"AP", "AP50", "AP75"}


def test_a_pretrained_backbone_beats_random_init_in_frozen_mode(world, cleaned, tmp_path):
    folder, _ = cleaned
    backbone = _pretrain(world, tmp_path / "pretrained")
    common = ["--mode", "frozen", "--cleaned-test", str(folder / "segmentation.txt")]
    pretrained = _run(world, tmp_path / "pre", "segmentation", "--backbone", str(backbone), *common)
    random_init = _run(world, tmp_path / "rand", "segmentation", "--init", "random", *common)
    for test_set in ("original", "cleaned"):
        # Measured 0.14 vs 0.07 mIoU: frozen random conv1-conv4 features cannot separate the classes.
        assert pretrained[test_set]["mIoU"] > random_init[test_set]["mIoU"] + 0.03
