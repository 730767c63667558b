"""``datascale finetune`` end to end through the real entry point, on a real VOC photo in real formats."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from datascale.cli import main
from scaling.models.backbones import build_backbone
from scaling.models.files import save_backbone

import finetune_data

LINEAGE_KEYS = {"task", "mode", "seed", "arch", "init", "pretrain_run", "subset_name", "subset_images",
                "num_classes", "steps"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = finetune_data.write_all(tmp_path_factory.mktemp("downstream"))
    torch.manual_seed(0)
    lineage = {"pretrain_run": "runs/pretrain/demo-30", "subset_name": "30", "subset_images": 3000, "steps": 50}
    save_backbone(build_backbone("resnet_demo"), root / "pretrained", {"num_classes": 12, "lineage": lineage})
    # The cleaned test sets: the dedup audit found the mirrored photo to be a duplicate.
    test = json.loads((root / "detection/annotations/instances_test.json").read_text())
    keep = [img for img in test["images"] if img["file_name"] != "mirror.jpg"]
    kept_ids = {img["id"] for img in keep}
    test.update(images=keep, annotations=[a for a in test["annotations"] if a["image_id"] in kept_ids])
    (root / "cleaned_detection.json").write_text(json.dumps(test))
    (root / "cleaned_segmentation.txt").write_text("photo\n")
    return root


def _finetune(world, out, task, *extra):
    return main(["-q", "finetune", "--task", task, "--data", str(world / task), "--out", str(out),
                 "--steps", "4", "--set", "train.log_every=2", "--set", "train.batch_size=4", *extra])


@pytest.mark.slow
def test_detection_run_writes_lineage_metrics_and_both_test_sets(world, tmp_path):
    run = tmp_path / "det"
    code = _finetune(world, run, "detection", "--mode", "frozen", "--backbone", str(world / "pretrained"),
                     "--cleaned-test", str(world / "cleaned_detection.json"))
    assert code == 0
    record = yaml.safe_load((run / "config.yaml").read_text())
    lineage = record["lineage"]
    assert LINEAGE_KEYS <= set(lineage)
    expected = {"task": "detection", "mode": "frozen", "init": "pretrained", "arch": "resnet_demo", "seed": 0,
                "pretrain_run": "runs/pretrain/demo-30", "subset_name": "30", "subset_images": 3000,
                "num_classes": 12, "steps": 4}
    assert {k: lineage[k] for k in expected} == expected
    assert record["inputs"]["backbone"]["sha256"] == lineage["backbone_sha256"]
    assert set(record["inputs"]) == {"backbone", "train_annotations", "test_annotations", "cleaned_test"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 4]
    assert all(lines[0][k] > 0 for k in ("loss", "loss_classifier", "loss_objectness", "lr"))
    result = json.loads((run / "metrics.json").read_text())
    assert result["task"] == "detection" and result["steps"] == 4
    assert set(result["metrics"]) == {"original", "cleaned"}
    assert all(set(m) == {"AP", "AP50", "AP75"} for m in result["metrics"].values())
    assert all(0.0 <= v <= 1.0 for m in result["metrics"].values() for v in m.values())
    assert (run / "complete.json").is_file() and not (run / "failed.json").exists()

    # Re-running a complete run is a no-op; another config in the same folder is refused.
    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert _finetune(world, run, "detection", "--mode", "frozen", "--backbone", str(world / "pretrained"),
                     "--cleaned-test", str(world / "cleaned_detection.json")) == 0
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert _finetune(world, run, "detection", "--mode", "finetune", "--backbone", str(world / "pretrained")) == 1


@pytest.mark.slow
def test_segmentation_run_reports_miou_per_class_on_both_test_sets(world, tmp_path):
    run = tmp_path / "seg"
    assert _finetune(world, run, "segmentation", "--mode", "finetune", "--backbone", str(world / "pretrained"),
                     "--cleaned-test", str(world / "cleaned_segmentation.txt")) == 0
    result = json.loads((run / "metrics.json").read_text())
    assert set(result["metrics"]) == {"original", "cleaned"}
    original = result["metrics"]["original"]
    assert {"mIoU", "pixel_accuracy", "IoU/background", "IoU/person"} <= set(original)
    assert 0.0 <= original["mIoU"] <= 1.0


@pytest.mark.slow
def test_pose_run_from_random_init_reports_keypoint_ap(world, tmp_path):
    run = tmp_path / "pose"
    assert _finetune(world, run, "pose", "--mode", "finetune", "--init", "random", "--arch", "resnet_demo") == 0
    lineage = yaml.safe_load((run / "config.yaml").read_text())["lineage"]
    assert lineage["init"] == "random" and lineage["pretrain_run"] is None
    result = json.loads((run / "metrics.json").read_text())
    assert set(result["metrics"]) == {"original"}
    assert set(result["metrics"]["original"]) == {"AP", "AP50", "AP75"}


def test_a_diverging_loss_stops_with_a_clear_error_and_failed_json(world, tmp_path, capsys):
    run = tmp_path / "nan"
    code = _finetune(world, run, "segmentation", "--init", "random", "--set", "train.lr=1.0e+30",
                     "--set", "train.clip_grad_norm=0", "--set", "train.warmup_steps=0",
                     "--set", "data.image_size=32")
    assert code == 1
    assert "training loss became nan" in capsys.readouterr().err
    failed = json.loads((run / "failed.json").read_text())
    assert failed["step"] >= 2 and "lower train.lr" in failed["error"]
    assert not (run / "complete.json").exists()


def test_a_backbone_of_another_architecture_is_a_clear_error(world, tmp_path, capsys):
    code = _finetune(world, tmp_path / "arch", "segmentation", "--backbone", str(world / "pretrained"),
                     "--arch", "resnet50", "--set", "data.image_size=160")
    assert code == 1
    assert "holds a resnet_demo backbone" in capsys.readouterr().err
    assert not (tmp_path / "arch").exists()


def test_a_test_file_with_other_categories_than_training_is_refused(world, tmp_path, capsys):
    """The model's labels follow the training file's categories: a reordered test file is an error."""
    test = json.loads((world / "detection/annotations/instances_test.json").read_text())
    test["categories"] = test["categories"][::-1]
    (tmp_path / "reordered.json").write_text(json.dumps(test))
    code = _finetune(world, tmp_path / "cats", "detection", "--init", "random",
                     "--set", f"data.test_annotations={tmp_path / 'reordered.json'}",
                     "--set", f"data.test_images={world / 'detection/images/test'}")
    assert code == 1
    assert "lists other categories than the training file" in capsys.readouterr().err
    assert not (tmp_path / "cats" / "complete.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--init", "random", "--backbone", "x.pt"], "init=random takes no backbone"),
    (["--set", "train.stepz=3", "--init", "random"], "did you mean 'steps'"),
    (["--set", "segmentation.atrous_rates=[]", "--init", "random"], "atrous_rates"),
])
def test_config_mistakes_exit_with_code_2(world, tmp_path, capsys, extra, message):
    assert _finetune(world, tmp_path / "cfg", "segmentation", *extra) == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_without_metadata_runs_as_init_checkpoint(world, tmp_path):
    torch.save({"state_dict": build_backbone("resnet_demo").state_dict()}, tmp_path / "other.pt")
    run = tmp_path / "ckpt"
    assert _finetune(world, run, "segmentation", "--backbone", str(tmp_path / "other.pt"),
                     "--set", "train.steps=1", "--set", "data.image_size=32") == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["lineage"]["init"] == "checkpoint"


def test_tensorboard_mirrors_metrics_jsonl(world, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    assert _finetune(world, run, "segmentation", "--init", "random", "--set", "logging.tensorboard=true",
                     "--set", "data.image_size=32") == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records if "loss" in r]
    assert events.Scalars("original/mIoU")[0].value == pytest.approx(records[-1]["original/mIoU"], rel=1e-6)


def test_wandb_asked_for_but_not_installed_is_a_clear_error(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as when it is not installed
    code = _finetune(world, tmp_path / "wb", "segmentation", "--init", "random", "--set", "logging.wandb=true",
                     "--set", "data.image_size=32")
    assert code == 2 and "the wandb package is not installed" in capsys.readouterr().err
