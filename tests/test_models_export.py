"""save_backbone / load_backbone: format, round trip, other checkpoints, wrong architectures."""

from __future__ import annotations

import json

import pytest
import torch

from datascale.errors import DataError
from scaling.models.backbones import MultiLabelClassifier, build_backbone
from scaling.models.files import load_backbone, save_backbone


@pytest.fixture
def classifier():
    torch.manual_seed(1)
    return MultiLabelClassifier(build_backbone("resnet_demo"), num_classes=7, prior=0.05).eval()


def test_export_writes_a_plain_state_dict_and_metadata(tmp_path, classifier):
    lineage = {"pretrain_run": "runs/pretrain/10M", "subset_name": "10M", "subset_images": 1000}
    weights = save_backbone(classifier, tmp_path, {"num_classes": 7, "classes_file": "classes.json",
                                                   "lineage": lineage})
    assert weights == tmp_path / "backbone.pt"
    state = torch.load(weights, weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())
    assert "conv1.weight" in state and "layer4.0.conv1.weight" in state
    assert not any(k.startswith(("fc.", "backbone.")) for k in state)
    meta = json.loads((tmp_path / "backbone.json").read_text())
    assert meta["arch"] == "resnet_demo" and meta["feature_dim"] == 128 and meta["num_classes"] == 7
    assert meta["classes_file"] == "classes.json" and meta["lineage"] == lineage
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


def test_round_trip_gives_the_same_features(tmp_path, classifier):
    save_backbone(classifier, tmp_path / "b.pt", {"num_classes": 7})
    loaded, meta = load_backbone(tmp_path / "b.pt")
    images = torch.randn(2, 3, 64, 64)
    assert meta["arch"] == "resnet_demo"
    assert torch.allclose(loaded.eval()(images), classifier.backbone(images))


def test_another_checkpoint_of_the_same_architecture_loads(tmp_path, classifier):
    # A whole classifier's state_dict, wrapped as trainers do: prefixes and head are dropped.
    torch.save({"module": classifier.state_dict()}, tmp_path / "trainer.pt")
    loaded, _ = load_backbone(tmp_path / "trainer.pt", "resnet_demo")
    images = torch.randn(1, 3, 64, 64)
    assert torch.allclose(loaded.eval()(images), classifier.backbone(images))


def test_a_backbone_of_another_architecture_is_refused_by_its_metadata(tmp_path, classifier):
    save_backbone(classifier, tmp_path, {})
    with pytest.raises(DataError, match="holds a resnet_demo backbone.*resnet50 was asked for"):
        load_backbone(tmp_path, "resnet50")


def test_a_bare_checkpoint_of_another_architecture_is_refused_by_its_shapes(tmp_path):
    torch.save(build_backbone("resnet50").state_dict(), tmp_path / "r50.pt")
    with pytest.raises(DataError, match="holds a resnet50 backbone, but resnet101 was asked for"):
        load_backbone(tmp_path / "r50.pt", "resnet101")
    with pytest.raises(DataError, match="holds a resnet50 backbone, but resnet_demo"):
        load_backbone(tmp_path / "r50.pt", "resnet_demo")


def test_a_checkpoint_without_metadata_needs_an_architecture(tmp_path, classifier):
    torch.save(classifier.backbone.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(DataError, match="no bare.json naming its architecture"):
        load_backbone(tmp_path / "bare.pt")


def test_a_file_that_is_not_weights_only_is_a_data_error(tmp_path):
    torch.save({"weights": object()}, tmp_path / "pickled.pt")
    with pytest.raises(DataError, match="weights-only"):
        load_backbone(tmp_path / "pickled.pt", "resnet_demo")
    with pytest.raises(DataError, match="not found"):
        load_backbone(tmp_path / "missing.pt", "resnet_demo")


def test_backbone_inputs_match_the_pretraining_loader():
    """Fine-tuning normalises with IMAGE_MEAN/STD; the pretraining loader scales to [-1, 1].

    The two must agree, or a pretrained backbone sees shifted inputs downstream.
    """
    import numpy as np
    import torch

    from data_tools.loader.transforms import to_unit_range
    from scaling.models.backbones import IMAGE_MEAN, IMAGE_STD

    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    loader = to_unit_range(pixels)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    finetune = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    assert torch.allclose(loader, finetune, atol=1e-6)
