"""CIFAR ResNets of the KD literature (RepDistiller / mdistiller): 3 stages of post-activation BasicBlocks.

resnet{8..110} use widths 16/16/32/64 (stem/stages); the "x4" models use 32/64/128/256. Depth = 6n + 2.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel
from ssl_kd.models.registry import register_model

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
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, in_ch = [], widths[0]
        for s, out_ch in enumerate(widths[1:]):
            blocks = [
                BasicBlock(in_ch if i == 0 else out_ch, out_ch, (1 if s == 0 else 2) if i == 0 else 1) for i in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feat_dim = widths[-1]
        self.feat_channels = tuple(widths)
        for m in self.modules():  # the KD repos' init; Linear keeps PyTorch's default
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


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
