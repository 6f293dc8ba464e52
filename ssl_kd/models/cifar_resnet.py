"""CIFAR ResNets of the KD literature (RepDistiller / mdistiller): 3 stages of post-activation BasicBlocks.

resnet{8..110} use widths 16/16/32/64 (stem/stages); the "x4" models use 32/64/128/256. Depth = 6n + 2.
cifar_resnet18 is the 4-stage ResNet-18 of the self-distillation repos (Self-KD-Lib, RecursiveMix).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel, kaiming_conv_bn_init
from ssl_kd.models.registry import check_option, register_model

NARROW = (16, 16, 32, 64)
WIDE = (32, 64, 128, 256)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(ClassifierModel):
    """Stem conv3x3 -> BN (-> ReLU) -> stages of BasicBlocks (the first at stride 1, the others stride 2) -> GAP -> fc.

    ``depth`` 6n+2 gives the KD repos' 3-stage nets (n blocks per stage); ``blocks`` gives the block count of each
    stage instead (ResNet-18 of Self-KD-Lib / RecursiveMix: 4 stages of 2). ``init``: ``kaiming`` is the KD repos'
    (conv kaiming fan_out, BN 1/0); ``torch`` keeps PyTorch's default init, as Self-KD-Lib and RecursiveMix do.
    """

    def __init__(
        self,
        depth: int | None,
        widths: tuple[int, ...],
        num_classes: int,
        blocks: tuple[int, ...] | None = None,
        stem_relu: bool = True,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if blocks is None:
            if depth is None or (depth - 2) % 6 != 0:
                raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
            blocks = ((depth - 2) // 6,) * (len(widths) - 1)
        if len(blocks) != len(widths) - 1:
            raise ValueError(f"one block count per stage: {len(widths) - 1} stages, got {blocks}")
        self.num_classes = num_classes
        stem: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0])]
        self.stem = nn.Sequential(*stem, nn.ReLU()) if stem_relu else nn.Sequential(*stem)
        stages, in_ch = [], widths[0]
        for s, (out_ch, n) in enumerate(zip(widths[1:], blocks)):
            first_stride = 1 if s == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(in_ch if i == 0 else out_ch, out_ch, first_stride if i == 0 else 1)
                                          for i in range(n)]))  # fmt: skip
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self._blocks = blocks
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feat_dim = widths[-1]
        self.feat_channels = tuple(widths)
        self._init = init
        self._init_weights(self)

    def _init_weights(self, module: nn.Module) -> None:
        if self._init == "kaiming":  # the KD repos' init; Linear keeps PyTorch's default
            kaiming_conv_bn_init(module)

    def build_stage(self, index: int, in_channels: int, stride: int) -> nn.Module:
        """A fresh stage shaped like stage `index` (its width and block count) reading `in_channels` at `stride`:
        HSAKD's extra stride-1 branch on the last stage (``multi_exit`` with an exit after the last stage)."""
        out_ch = self.feat_channels[index + 1]
        n = self._blocks[index]
        stage = nn.Sequential(*[BasicBlock(in_channels if i == 0 else out_ch, out_ch, stride if i == 0 else 1)
                                for i in range(n)])  # fmt: skip
        self._init_weights(stage)
        return stage


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def factory(num_classes: int, channels: dict[str, int] | None = None) -> CifarResNet:
        if channels:  # a filter-pruned shape (ssl_kd.prune's export): {conv name: filters kept}
            from ssl_kd.models.pruned import pruned_cifar_resnet

            return pruned_cifar_resnet(depth, widths, num_classes, channels)
        return CifarResNet(depth, widths, num_classes)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR ResNet depth {depth}, widths {widths} (RepDistiller/mdistiller '{name}')."
    register_model(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, NARROW)
_register("resnet8x4", 8, WIDE)
_register("resnet32x4", 32, WIDE)


@register_model("cifar_resnet18")
def cifar_resnet18(num_classes: int, width: int = 64, stem_relu: bool = True) -> CifarResNet:
    """The CIFAR ResNet-18 of Self-KD-Lib and RecursiveMix: 3x3 stem, BasicBlock [2, 2, 2, 2], widths
    w/w/2w/4w/8w (w = 64: 11.2M params), PyTorch's default init. ``stem_relu=False`` is MixSKD's backbone
    (Self-KD-Lib models/resnet_mixskd.py has no ReLU after the stem BN); ``width`` < 64 gives a narrow net."""
    check_option("cifar_resnet18", "width", width, isinstance(width, int) and width >= 1, "a positive integer")
    w = width
    return CifarResNet(None, (w, w, 2 * w, 4 * w, 8 * w), num_classes, (2, 2, 2, 2), stem_relu, "torch")
