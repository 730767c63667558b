"""The backbone registry: the only list of architectures (no torch import, so configs check names on load).

Each entry names the factory that builds the trunk (imported when a backbone
is built) and the smallest input it is meant for: configs refuse a
demo-sized input on a ResNet-50/101/152, whose stride-32 trunk would see a
2x2 conv5 map. Add a backbone: write a factory ``f(replace_stride_with_dilation)
-> nn.Module`` with torchvision's ResNet attribute names and add one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from datascale.errors import ConfigError


@dataclass(frozen=True)
class BackboneEntry:
    """A registered architecture."""

    factory: str          # "module:function", called with replace_stride_with_dilation
    min_image_size: int   # smallest sensible input side in pixels (pretraining crops, fine-tuning images)
    summary: str

    def load(self) -> Callable:
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)


BACKBONES: dict[str, BackboneEntry] = {
    "resnet_demo": BackboneEntry("scaling.models.backbones:demo_resnet", 32,
                                 "a small ResNet for 48-128 px images on a CPU (dilation-capable)"),
    "resnet_demo_narrow": BackboneEntry("scaling.models.backbones:demo_resnet_narrow", 32,
                                        "resnet_demo with half the channels (the demo's capacity axis)"),
    "resnet_demo_wide": BackboneEntry("scaling.models.backbones:demo_resnet_wide", 32,
                                      "resnet_demo with twice the channels (the demo's capacity axis)"),
    "resnet50": BackboneEntry("scaling.models.backbones:torchvision_resnet50", 160, "torchvision ResNet-50"),
    "resnet101": BackboneEntry("scaling.models.backbones:torchvision_resnet101", 160, "torchvision ResNet-101"),
    "resnet152": BackboneEntry("scaling.models.backbones:torchvision_resnet152", 160, "torchvision ResNet-152"),
}


def check_arch(arch: str) -> BackboneEntry:
    """The registry entry of ``arch``; ConfigError listing the registered names otherwise."""
    if arch not in BACKBONES:
        raise ConfigError(f"unknown backbone architecture {arch!r}; registered: {', '.join(BACKBONES)}")
    return BACKBONES[arch]
