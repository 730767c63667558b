"""ResNet backbones and the multi-label pretraining head (files: :mod:`scaling.models.files`).

Every backbone is a :class:`Backbone`: a ResNet trunk without its classifier,
with torchvision's attribute names (``conv1, bn1, relu, maxpool,
layer1..layer4``), so a ``state_dict`` is interchangeable with torchvision's
(minus ``fc``). Stages follow the paper's naming: ``conv1`` is the stem,
``conv2..conv5`` are ``layer1..layer4``.

Architectures live in the registry :data:`scaling.models.registry.BACKBONES`:
``resnet50/101/152`` are torchvision's (always ``weights=None``: nothing is
ever downloaded) and ``resnet_demo`` is a small ResNet for 64-128 px images on
a CPU, whose blocks accept dilation (torchvision's BasicBlock refuses it,
DeepLab needs it for output stride 8).

Backbones expect float images normalised with :data:`IMAGE_MEAN` /
:data:`IMAGE_STD`: the paper's scaling of pixels to [-1, 1], which is exactly
what the pretraining loader produces (``x / 127.5 - 1``), so pretraining,
fine-tuning and the dedup embedder all feed a backbone the same inputs.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from datascale.errors import ConfigError
from scaling.models.registry import check_arch

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

#: Paper stage name -> torchvision attribute names holding its parameters.
STAGES: dict[str, tuple[str, ...]] = {
    "conv1": ("conv1", "bn1"),
    "conv2": ("layer1",),
    "conv3": ("layer2",),
    "conv4": ("layer3",),
    "conv5": ("layer4",),
}
#: The stages the paper keeps fixed in "frozen" fine-tuning: everything before conv5.
FROZEN_STAGES = ("conv1", "conv2", "conv3", "conv4")

Dilation = tuple[bool, bool, bool]


# --------------------------------------------------------------------------- resnet_demo


class DemoBlock(nn.Module):
    """Two 3x3 convs with a residual (a BasicBlock) that also accepts dilation."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DemoResNet(nn.Module):
    """A small ResNet (torchvision layout) for demo-sized images on CPU.

    ``widths`` are the channels of layer1..layer4, ``blocks`` the blocks per
    stage. ``replace_stride_with_dilation`` works as in torchvision: for
    layer2..layer4, a True keeps the resolution and dilates instead.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), blocks: Sequence[int] = (1, 1, 2, 1),
                 replace_stride_with_dilation: Dilation = (False, False, False)) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(widths[0], blocks[0], 1, False)
        self.layer2 = self._make_layer(widths[1], blocks[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(widths[2], blocks[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(widths[3], blocks[3], 2, replace_stride_with_dilation[2])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        # The first block of a dilated stage keeps the previous dilation, as in
        # torchvision, so the receptive field grows smoothly.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [DemoBlock(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes
        layers += [DemoBlock(planes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


# Factories named by the registry (scaling.models.registry.BACKBONES): dilation -> trunk.


def demo_resnet(replace_stride_with_dilation: Dilation) -> nn.Module:
    return DemoResNet(replace_stride_with_dilation=replace_stride_with_dilation)


# The demo's capacity axis (the paper's ResNet-50/101/152 question at CPU size): half and
# twice the channels of resnet_demo at the same depth.
def demo_resnet_narrow(replace_stride_with_dilation: Dilation) -> nn.Module:
    return DemoResNet(widths=(8, 16, 32, 64), replace_stride_with_dilation=replace_stride_with_dilation)


def demo_resnet_wide(replace_stride_with_dilation: Dilation) -> nn.Module:
    return DemoResNet(widths=(32, 64, 128, 256), replace_stride_with_dilation=replace_stride_with_dilation)


def _torchvision(name: str, replace_stride_with_dilation: Dilation) -> nn.Module:
    import torchvision

    # weights=None always: nothing is ever downloaded; our checkpoints are the only weights.
    return getattr(torchvision.models, name)(
        weights=None, replace_stride_with_dilation=list(replace_stride_with_dilation))


def torchvision_resnet50(replace_stride_with_dilation: Dilation) -> nn.Module:
    return _torchvision("resnet50", replace_stride_with_dilation)


def torchvision_resnet101(replace_stride_with_dilation: Dilation) -> nn.Module:
    return _torchvision("resnet101", replace_stride_with_dilation)


def torchvision_resnet152(replace_stride_with_dilation: Dilation) -> nn.Module:
    return _torchvision("resnet152", replace_stride_with_dilation)


# --------------------------------------------------------------------------- Backbone


class Backbone(nn.Module):
    """A ResNet trunk: ``forward`` gives pooled features, ``forward_stages`` every stage.

    Attributes: ``arch`` (registry name), ``feature_dim`` (channels of conv5),
    ``stage_channels`` (``{"conv1": C, ..., "conv5": C}``),
    ``replace_stride_with_dilation``.
    """

    def __init__(self, arch: str, trunk: nn.Module, replace_stride_with_dilation: Dilation) -> None:
        super().__init__()
        self.arch = arch
        self.replace_stride_with_dilation = tuple(replace_stride_with_dilation)
        # Registration order matters: torchvision's IntermediateLayerGetter (FPN)
        # walks the children in this order.
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(trunk, name))
        self.stage_channels = {"conv1": self.conv1.out_channels}
        for stage in ("conv2", "conv3", "conv4", "conv5"):
            (layer,) = STAGES[stage]
            convs = [m for m in getattr(self, layer).modules() if isinstance(m, nn.Conv2d)]
            self.stage_channels[stage] = convs[-1].out_channels
        self.feature_dim = self.stage_channels["conv5"]

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output for a (B, 3, H, W) batch: ``{"conv1": ..., "conv5": ...}``."""
        out = {"conv1": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
        out["conv2"] = self.layer1(out["conv1"])
        out["conv3"] = self.layer2(out["conv2"])
        out["conv4"] = self.layer3(out["conv3"])
        out["conv5"] = self.layer4(out["conv4"])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled conv5 features, shape (B, feature_dim)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules holding a paper stage's parameters (``"conv4"`` -> [layer3])."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return [getattr(self, name) for name in STAGES[stage]]


def build_backbone(arch: str, *, replace_stride_with_dilation: Sequence[bool] = (False, False, False)
                   ) -> Backbone:
    """A randomly initialised backbone of a registered architecture.

    ``replace_stride_with_dilation`` (three booleans for layer2..layer4)
    trades strides for dilation: (False, True, True) gives output stride 8.
    Unknown ``arch`` raises ConfigError listing the registered names.
    """
    entry = check_arch(arch)
    dilation = tuple(bool(d) for d in replace_stride_with_dilation)
    if len(dilation) != 3:
        raise ConfigError("replace_stride_with_dilation needs three booleans (layer2, layer3, layer4)")
    return Backbone(arch, entry.load()(dilation), dilation)


# --------------------------------------------------------------------------- freezing


class FixedStatsBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that always normalises with its running statistics and never updates them.

    Unlike ``module.eval()``, this survives ``model.train()`` and wrappers such
    as torchvision's IntermediateLayerGetter. Its state_dict keys are those of
    BatchNorm2d, so checkpoints stay interchangeable. The affine weight and
    bias still train unless their ``requires_grad`` is switched off.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)


def _with_fixed_stats(bn: nn.BatchNorm2d) -> FixedStatsBatchNorm2d:
    fixed = FixedStatsBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    # Share, not copy: an optimizer built earlier keeps updating the same parameters.
    fixed.weight, fixed.bias = bn.weight, bn.bias
    fixed.running_mean, fixed.running_var = bn.running_mean, bn.running_var
    fixed.num_batches_tracked = bn.num_batches_tracked
    return fixed


def _replace_batchnorms(module: nn.Module, convert) -> int:
    """Replace, in place, every BatchNorm2d inside ``module`` for which ``convert`` returns a layer."""
    replaced = 0
    for name, child in module.named_children():
        new = convert(child) if isinstance(child, nn.BatchNorm2d) else None
        if new is not None:
            setattr(module, name, new)
            replaced += 1
        else:
            replaced += _replace_batchnorms(child, convert)
    return replaced


def fix_batchnorm_stats(module: nn.Module) -> int:
    """Replace every BatchNorm2d inside ``module`` by FixedStatsBatchNorm2d, in place.

    Parameters keep their identity. Call it before wrapping the modules into a
    task model: containers built earlier still hold the old layers. Returns
    the number of layers replaced.
    """
    return _replace_batchnorms(module, lambda bn: None if isinstance(bn, FixedStatsBatchNorm2d)
                               else _with_fixed_stats(bn))


def sync_batchnorms(module: nn.Module) -> int:
    """Replace every batch norm of ``module`` that updates its statistics by a SyncBatchNorm, in place.

    Statistics are then computed over the batches of every rank (GPU only). Fixed
    ones (FixedStatsBatchNorm2d: frozen stages, ``bn_stats=frozen``) stay fixed;
    parameters and statistics are shared, not copied. Returns the number replaced.
    """
    return _replace_batchnorms(module, lambda bn: None if isinstance(bn, FixedStatsBatchNorm2d)
                               else nn.SyncBatchNorm.convert_sync_batchnorm(bn))


def freeze_stages(backbone: Backbone, stages: Iterable[str] = FROZEN_STAGES) -> int:
    """Freeze whole stages: no gradients, batch-norm statistics fixed (the paper's frozen mode).

    Call before building a task model on the backbone (see fix_batchnorm_stats).
    Returns the number of parameters frozen.
    """
    frozen = 0
    for stage in stages:
        backbone.stage_modules(stage)  # raises ConfigError naming the valid stages
        for name in STAGES[stage]:
            module = getattr(backbone, name)
            for param in module.parameters():
                param.requires_grad_(False)
                frozen += param.numel()
            if isinstance(module, nn.BatchNorm2d):  # bn1 sits directly on the backbone
                setattr(backbone, name, _with_fixed_stats(module))
            else:
                fix_batchnorm_stats(module)
    return frozen


# --------------------------------------------------------------------------- classifier


class MultiLabelClassifier(nn.Module):
    """Backbone + one fully connected layer of per-class logits (sigmoid cross-entropy).

    The bias starts at log(p / (1 - p)) for the prior ``prior`` = p, so every
    class starts at probability p rather than 0.5: with thousands of rare
    classes a 0.5 start floods the loss with confident false positives
    (the focal-loss prior initialisation). Weights start at N(0, 0.01).
    """

    def __init__(self, backbone: Backbone, num_classes: int, prior: float = 0.01) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        if not 0.0 < prior < 1.0:
            raise ConfigError(f"the class prior must lie strictly between 0 and 1, got {prior}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.fc = nn.Linear(backbone.feature_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.constant_(self.fc.bias, math.log(prior / (1.0 - prior)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for a normalised image batch (B, 3, H, W)."""
        return self.fc(self.backbone(x))


# --------------------------------------------------------------------------- weight scale


def _conv_bn_pairs(module: nn.Module):
    """(conv, bn) pairs where a BatchNorm2d is the next sibling registered after a Conv2d of as
    many channels (the stem, every residual block's convs and downsample paths)."""
    children = list(module.children())
    for first, second in zip(children, children[1:]):
        if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d) \
                and first.out_channels == second.num_features:
            yield first, second
    for child in children:
        yield from _conv_bn_pairs(child)


@torch.no_grad()
def rescale_to_init_norm(backbone: nn.Module) -> int:
    """Scale every conv that feeds a batch norm back to the weight norm of a fresh He init,
    keeping the function exactly (the BN's running mean, variance and eps follow).

    Why: with batch norm a conv's output is invariant to its weight's scale, so pretraining
    with weight decay too small to hold the norm lets it grow (1.5-2x here after 800
    steps), and the effective learning rate of fine-tuning, lr / |w|^2, shrinks with it: the
    pretrained trunk then learns slower than a random one at the same lr (docs/transfer.md).
    Returns the number of convs rescaled.
    """
    count = 0
    for conv, bn in _conv_bn_pairs(backbone):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1] // conv.groups
        target = math.sqrt(conv.weight.numel() * 2.0 / fan_out)  # E|w| under kaiming_normal(fan_out)
        norm = float(conv.weight.norm())
        if norm == 0:
            continue
        scale = target / norm
        conv.weight.mul_(scale)
        if conv.bias is not None:
            conv.bias.mul_(scale)
        bn.running_mean.mul_(scale)
        bn.running_var.mul_(scale * scale)
        bn.eps = bn.eps * scale * scale
        count += 1
    return count
