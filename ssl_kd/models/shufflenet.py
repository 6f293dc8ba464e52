"""The CIFAR ShuffleNets of the KD literature (RepDistiller / mdistiller ``ShuffleV1`` and ``ShuffleV2``).

Both keep full resolution after a 1x1 stem (no stride, no max-pool, unlike the ImageNet models), then three
stride-2 stages, so a 32px image ends at 4x4 before the global pool. PyTorch's default initialisation (the reference
sets none).

- V1 (groups 3, widths 240/480/960, 4/8/4 units): bottleneck = grouped 1x1 -> channel shuffle -> depthwise 3x3 ->
  grouped 1x1; a stride-2 unit concatenates a 3x3 average-pooled shortcut, so it adds only out - in channels.
  The first unit sees the 24-channel stem and uses an ungrouped first 1x1.
- V2 (net size 1: widths 116/232/464, 3/7/3 units, 1024-channel final 1x1 conv): each stage is one down-sampling
  unit (two stride-2 branches, concatenated) then units that split the channels in half, transform one half, and
  shuffle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel
from ssl_kd.models.registry import check_option, register_model


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, g*c, H, W] -> interleave the g groups' channels, so grouped convolutions see each other's outputs."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(in_ch: int, out_ch: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch))


# --------------------------------------------------------------------------------------------- ShuffleNet V1
class _V1Unit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_ch // 4
        self.first_groups = 1 if in_ch == 24 else groups
        self.reduce = _conv_bn(in_ch, mid, groups=self.first_groups)
        self.depthwise = _conv_bn(mid, mid, 3, stride, groups=mid)
        self.expand = _conv_bn(mid, out_ch, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.reduce(x)), self.first_groups)
        out = self.expand(F.relu(self.depthwise(out)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], dim=1))
        return F.relu(out + x)


class ShuffleNetV1(ClassifierModel):
    def __init__(
        self, num_classes: int, widths: tuple[int, ...] = (240, 480, 960), units: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(_conv_bn(3, 24), nn.ReLU())
        stages, in_ch = [], 24
        for width, n in zip(widths, units):
            # the stride-2 unit concatenates its input, so it only produces width - in_ch new channels
            blocks = [_V1Unit(in_ch, width - in_ch, 2, groups)]
            blocks += [_V1Unit(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feat_dim = widths[-1]
        self.feat_channels = (24, *widths)


# --------------------------------------------------------------------------------------------- ShuffleNet V2
class _V2Unit(nn.Module):
    """Split in half; one half passes through, the other goes 1x1 -> depthwise 3x3 -> 1x1; concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            _conv_bn(half, half), nn.ReLU(), _conv_bn(half, half, 3, groups=half), _conv_bn(half, half), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        keep, work = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(work)], dim=1), 2)


class _V2Down(nn.Module):
    """Both branches stride 2: depthwise 3x3 -> 1x1 on the input, and 1x1 -> depthwise 3x3 -> 1x1."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.left = nn.Sequential(_conv_bn(in_ch, in_ch, 3, 2, groups=in_ch), _conv_bn(in_ch, mid), nn.ReLU())
        self.right = nn.Sequential(
            _conv_bn(in_ch, mid), nn.ReLU(), _conv_bn(mid, mid, 3, 2, groups=mid), _conv_bn(mid, mid), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


V2_SIZES = {
    0.5: ((48, 96, 192), 1024),
    1.0: ((116, 232, 464), 1024),
    1.5: ((176, 352, 704), 1024),
    2.0: ((224, 488, 976), 2048),
}


class ShuffleNetV2(ClassifierModel):
    def __init__(self, num_classes: int, net_size: float = 1.0, units: tuple[int, ...] = (3, 7, 3)) -> None:
        super().__init__()
        widths, last = V2_SIZES[net_size]
        self.num_classes = num_classes
        self.stem = nn.Sequential(_conv_bn(3, 24), nn.ReLU())
        stages, in_ch = [], 24
        for width, n in zip(widths, units):
            stages.append(nn.Sequential(_V2Down(in_ch, width), *[_V2Unit(width) for _ in range(n)]))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(_conv_bn(widths[-1], last), nn.ReLU())
        self.fc = nn.Linear(last, num_classes)
        self.feat_dim = last
        self.feat_channels = (24, *widths)

    pre_pool_modules = ("head",)

    def pre_pool(self, x: Tensor) -> Tensor:
        return self.head(x)


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int) -> ShuffleNetV1:
    """RepDistiller/mdistiller ``ShuffleV1`` (groups 3; the KD CIFAR-100 student)."""
    return ShuffleNetV1(num_classes)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, net_size: float = 1.0) -> ShuffleNetV2:
    """RepDistiller/mdistiller ``ShuffleV2`` (net size 1.0 is the KD CIFAR-100 student)."""
    check_option("shufflenetv2", "net_size", net_size, net_size in V2_SIZES, f"one of {sorted(V2_SIZES)}")
    return ShuffleNetV2(num_classes, float(net_size))
