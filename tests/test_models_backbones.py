"""Backbone registry, stage shapes, dilation, freezing helpers and the multi-label head."""

from __future__ import annotations

import math

import pytest
import torch

from datascale.errors import ConfigError
from scaling.models.registry import BACKBONES
from scaling.models.backbones import (FROZEN_STAGES, FixedStatsBatchNorm2d, MultiLabelClassifier,
                            build_backbone, fix_batchnorm_stats, freeze_stages)

TORCHVISION_NAMES = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def test_registry_has_the_paper_and_demo_architectures():
    assert {"resnet50", "resnet101", "resnet152", "resnet_demo"} <= set(BACKBONES)


def test_unknown_architecture_is_a_config_error_listing_the_registered_ones():
    with pytest.raises(ConfigError, match="resnet_demo.*resnet50|resnet50.*resnet_demo"):
        build_backbone("resnet18x")


def test_demo_backbone_uses_torchvision_names_and_paper_stage_strides():
    backbone = build_backbone("resnet_demo")
    assert [name for name, _ in backbone.named_children()] == TORCHVISION_NAMES
    stages = backbone.forward_stages(torch.randn(2, 3, 128, 128))
    assert list(stages) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    sides = {name: out.shape[-1] for name, out in stages.items()}
    assert sides == {"conv1": 32, "conv2": 32, "conv3": 16, "conv4": 8, "conv5": 4}
    assert {name: out.shape[1] for name, out in stages.items()} == backbone.stage_channels
    assert backbone(torch.randn(2, 3, 128, 128)).shape == (2, backbone.feature_dim)


@pytest.mark.parametrize("arch", ["resnet_demo", "resnet50"])
def test_dilation_gives_output_stride_8_with_the_same_parameters(arch):
    plain = build_backbone(arch)
    dilated = build_backbone(arch, replace_stride_with_dilation=(False, True, True))
    conv5 = dilated.forward_stages(torch.randn(1, 3, 64, 64))["conv5"]
    assert conv5.shape[-2:] == (8, 8)
    # Dilation changes strides, not weights: a checkpoint loads into either.
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in dilated.state_dict().items()}


def test_torchvision_backbone_feature_dim():
    assert build_backbone("resnet50").feature_dim == 2048


def test_freeze_stages_stops_gradients_and_statistics_before_conv5():
    backbone = build_backbone("resnet_demo")
    frozen = freeze_stages(backbone)
    assert frozen == sum(p.numel() for s in ("conv1", "bn1", "layer1", "layer2", "layer3")
                         for p in getattr(backbone, s).parameters())
    assert all(not p.requires_grad for s in ("conv1", "bn1", "layer1", "layer2", "layer3")
               for p in getattr(backbone, s).parameters())
    assert all(p.requires_grad for p in backbone.layer4.parameters())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train()
    backbone(torch.randn(4, 3, 64, 64) * 3 + 1)
    after = backbone.state_dict()
    early = [k for k in before if not k.startswith("layer4")]
    assert all(torch.equal(before[k], after[k]) for k in early)
    assert not torch.equal(before["layer4.0.bn1.running_mean"], after["layer4.0.bn1.running_mean"])
    assert isinstance(backbone.bn1, FixedStatsBatchNorm2d)
    assert FROZEN_STAGES == ("conv1", "conv2", "conv3", "conv4")


def test_fixed_statistics_survive_train_mode_and_keep_checkpoint_keys():
    backbone = build_backbone("resnet_demo")
    keys = list(backbone.state_dict())
    assert fix_batchnorm_stats(backbone) > 0
    assert list(backbone.state_dict()) == keys
    backbone.train()
    mean = backbone.layer4[0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert torch.equal(mean, backbone.layer4[0].bn1.running_mean)


def test_classifier_starts_every_class_near_its_prior():
    torch.manual_seed(0)
    model = MultiLabelClassifier(build_backbone("resnet_demo"), num_classes=500, prior=0.01)
    assert torch.allclose(model.fc.bias, torch.full((500,), math.log(0.01 / 0.99)))
    model.eval()
    probabilities = torch.sigmoid(model(torch.randn(4, 3, 64, 64)))
    assert probabilities.shape == (4, 500)
    assert abs(probabilities.mean().item() - 0.01) < 0.005


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.1])
def test_classifier_rejects_a_prior_outside_zero_one(prior):
    with pytest.raises(ConfigError, match="prior"):
        MultiLabelClassifier(build_backbone("resnet_demo"), num_classes=3, prior=prior)


def test_demo_capacity_axis_widths_order_the_parameter_counts():
    counts = {arch: sum(p.numel() for p in build_backbone(arch).parameters())
              for arch in ("resnet_demo_narrow", "resnet_demo", "resnet_demo_wide")}
    assert counts["resnet_demo_narrow"] < counts["resnet_demo"] < counts["resnet_demo_wide"]
    assert build_backbone("resnet_demo_wide").feature_dim == 256


def test_rescaling_a_grown_trunk_to_init_norm_keeps_its_function_exactly():
    """Pretraining grows conv norms behind batch norm; rescaling restores the effective lr."""
    from scaling.models.backbones import rescale_to_init_norm

    torch.manual_seed(0)
    fresh, grown = build_backbone("resnet_demo"), build_backbone("resnet_demo")
    with torch.no_grad():  # a trunk whose convs grew 1.5-3x, with running statistics to match
        for module in grown.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        for index, conv in enumerate(m for m in grown.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.mul_(1.5 + index % 4 * 0.5)
    grown.eval()
    x = torch.randn(3, 3, 64, 64)
    before = grown(x)
    assert rescale_to_init_norm(grown) == sum(isinstance(m, torch.nn.Conv2d) for m in grown.modules())
    assert torch.allclose(grown(x), before, atol=1e-5, rtol=1e-4)
    grown.train()  # batch statistics: scale invariant as well
    for name, weight in grown.named_parameters():
        if weight.dim() == 4:
            expected = dict(fresh.named_parameters())[name].norm()
            assert abs(weight.norm() - expected) / expected < 0.1, name
