"""Physically smaller CIFAR ResNets, WRNs (KD and SSL) and torchvision ResNets: the shapes a filter-pruning export
builds.

`create_model(arch, n, channels={conv name: filters kept})` builds one (the factories in `cifar_resnet.py`,
`cifar_wrn.py`, `wrn.py` and `resnet.py` pass `channels` here), so the shape is a constructor spec like any other
and a pruned model is rebuilt on resume and stage init. Parameter names are those of the full model (a conv keeps
its name, only its tensors are smaller), plus buffers the export fills:

* a conv whose output only feeds the next conv of its block (`conv1`; also a Bottleneck's `conv2`) loses its
  pruned filters, its BN loses those channels, and the next conv loses those input channels; what a removed
  channel still fed it (a zero filter's BN outputs a constant, BN(0), after the activation) is folded into that
  conv's `fold` buffer, a one-channel kernel applied to a map of ones, so zero padding at the borders is
  reproduced exactly;
* a conv that writes into the residual stream (the stem, a block's last conv, a shortcut) computes only its kept
  filters and writes them into the stream channels listed in its `index` buffer; a removed channel gets its
  constant (`fill` / `bias2`). The stream keeps its width (he-y's small-model converter does the same, adding the
  BN constants of removed block outputs as we do).

The forward equals the full model's with the pruned filters set to zero (max abs difference ~1e-6).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_kd.models.registry import check_option


def _check(arch: str, channels: Mapping[str, int], full: Mapping[str, int]) -> dict[str, int]:
    """Filters kept per conv; the keys must name prunable convs, the values be in [1, full width]."""
    if not isinstance(channels, Mapping):
        check_option(arch, "channels", channels, False, "a mapping {conv name: filters kept}")
    out = {}
    for key, value in channels.items():
        check_option(arch, "channels", key, key in full, f"conv names of this model ({', '.join(full)})")
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= full[key]
        check_option(arch, f"channels.{key}", value, ok, f"an integer in [1, {full[key]}]")
        out[key] = value
    return out


def _index(n: int, width: int) -> Tensor | None:
    """The stream channels a narrowed writer fills (loaded from the export), None when it fills all of them."""
    return torch.arange(n) if n < width else None


class ChannelScatter(nn.Module):
    """Put a narrowed tensor into `width` channels at `index`; the other channels hold their constant `fill`."""

    def __init__(self, n: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.register_buffer("index", torch.arange(n))
        self.register_buffer("fill", torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        out = self.fill.to(x.dtype).view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[2:])
        return out.index_copy(1, self.index, x)


class PrunedConv2d(nn.Conv2d):
    """A conv with some of its filters and/or input channels removed.

    `fold` (when its input was narrowed): what the removed input channels, constant maps, contributed; added as
    conv(ones, fold) so that the zero padding of the borders is exact. `index` (when it writes a wider stream):
    the stream channels its filters fill; the others are zero (a removed filter of a conv without BN after it)."""

    def __init__(self, in_ch: int, n: int, *args, width: int | None = None, fold: bool = False, **kwargs) -> None:
        super().__init__(in_ch, n, *args, **kwargs)
        self.width = width
        self.register_buffer("index", torch.arange(n) if width is not None and n < width else None)
        self.register_buffer("fold", torch.zeros(n, 1, *self.kernel_size) if fold else None)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if self.fold is not None:
            ones = x.new_ones(1, 1, *x.shape[2:])
            out = out + F.conv2d(ones, self.fold.to(x.dtype), None, self.stride, self.padding, self.dilation)
        if self.index is not None:
            out = out.new_zeros(out.shape[0], self.width, *out.shape[2:]).index_copy(1, self.index, out)
        return out


# ------------------------------------------------------------------------------------------------ CIFAR ResNet
def resnet_conv_widths(depth: int, widths: tuple[int, ...]) -> dict[str, int]:
    """Every prunable conv of a CIFAR ResNet by module name, with its full number of filters."""
    n = (depth - 2) // 6
    out = {"stem.0": widths[0]}
    in_ch = widths[0]
    for s, out_ch in enumerate(widths[1:]):
        for b in range(n):
            stride = (1 if s == 0 else 2) if b == 0 else 1
            cin = in_ch if b == 0 else out_ch
            out[f"stages.{s}.{b}.conv1"] = out_ch
            out[f"stages.{s}.{b}.conv2"] = out_ch
            if stride != 1 or cin != out_ch:
                out[f"stages.{s}.{b}.downsample.0"] = out_ch
        in_ch = out_ch
    return out


class PrunedBasicBlock(nn.Module):
    """The post-activation BasicBlock with conv1 narrowed to c1 filters, conv2 to c2 filters added into the
    stream channels `keep2` (a removed one adds its constant `bias2`), the downsample (if any) to cd filters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, c1: int, c2: int, cd: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, c1, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = PrunedConv2d(c1, c2, 3, 1, 1, bias=False, fold=c1 < out_ch)
        self.bn2 = nn.BatchNorm2d(c2)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            parts = [nn.Conv2d(in_ch, cd, 1, stride, bias=False), nn.BatchNorm2d(cd)]
            self.downsample = nn.Sequential(*parts, *([ChannelScatter(cd, out_ch)] if cd < out_ch else []))
        self.register_buffer("keep2", _index(c2, out_ch))
        self.register_buffer("bias2", torch.zeros(out_ch) if c2 < out_ch else None)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        if self.keep2 is None:
            return F.relu(out + residual)
        out = residual.index_add(1, self.keep2, out) + self.bias2.to(out.dtype).view(1, -1, 1, 1)
        return F.relu(out)


def pruned_cifar_resnet(depth: int, widths: tuple[int, int, int, int], num_classes: int, channels: Mapping[str, int]):
    """A CifarResNet of the given depth and widths whose convs keep `channels[name]` filters."""
    from ssl_kd.models.cifar_resnet import CifarResNet

    full = resnet_conv_widths(depth, widths)
    arch = f"resnet{depth}" + ("x4" if widths[0] == 32 else "")
    kept = {**full, **_check(arch, channels, full)}
    model = CifarResNet(depth, widths, num_classes)  # same head, init and attributes; the body is rebuilt below
    c0 = kept["stem.0"]
    stem = [nn.Conv2d(3, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU()]
    model.stem = nn.Sequential(*stem, *([ChannelScatter(c0, widths[0])] if c0 < widths[0] else []))
    n, in_ch, stages = (depth - 2) // 6, widths[0], []
    for s, out_ch in enumerate(widths[1:]):
        blocks = []
        for b in range(n):
            p = f"stages.{s}.{b}."
            stride = (1 if s == 0 else 2) if b == 0 else 1
            cd = kept.get(p + "downsample.0", out_ch)
            blocks.append(
                PrunedBasicBlock(in_ch if b == 0 else out_ch, out_ch, stride, kept[p + "conv1"], kept[p + "conv2"], cd)
            )
        stages.append(nn.Sequential(*blocks))
        in_ch = out_ch
    model.stages = nn.ModuleList(stages)
    return model


# ------------------------------------------------------------------------------------------------ KD WRN
def wrn_conv_widths(depth: int, widen_factor: int) -> dict[str, int]:
    """Every prunable conv of a KD-literature WRN by module name, with its full number of filters."""
    n = (depth - 4) // 6
    widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    out = {"stem": widths[0]}
    for g in range(3):
        for i in range(n):
            cin, stride = (widths[g] if i == 0 else widths[g + 1]), ((1 if g == 0 else 2) if i == 0 else 1)
            out[f"groups.{g}.{i}.conv1"] = widths[g + 1]
            out[f"groups.{g}.{i}.conv2"] = widths[g + 1]
            if cin != widths[g + 1] or stride != 1:
                out[f"groups.{g}.{i}.shortcut"] = widths[g + 1]
    return out


class PrunedPreActBlock(nn.Module):
    """The KD WRN's pre-activation block with conv1 narrowed to c1 filters (bn2 to c1 channels), conv2 to c2
    filters written into the stream channels `keep2`, and the shortcut (if any) to cs filters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float, c1: int, c2: int, cs: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, c1, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = PrunedConv2d(c1, c2, 3, 1, 1, bias=False, fold=c1 < out_ch)
        self.shortcut: nn.Module | None = None
        if in_ch != out_ch or stride != 1:
            self.shortcut = PrunedConv2d(in_ch, cs, 1, stride, 0, bias=False, width=out_ch)
        self.relu = nn.ReLU()
        self.register_buffer("keep2", _index(c2, out_ch))

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(act)
        out = self.conv2(self.drop(self.relu(self.bn2(self.conv1(act)))))
        return residual + out if self.keep2 is None else residual.index_add(1, self.keep2, out)


def pruned_cifar_wrn(depth: int, widen_factor: int, num_classes: int, drop_rate: float, channels: Mapping[str, int]):
    """A KD-literature WRN whose convs keep `channels[name]` filters."""
    from ssl_kd.models.cifar_wrn import CifarWideResNet

    full = wrn_conv_widths(depth, widen_factor)
    kept = {**full, **_check(f"wrn_{depth}_{widen_factor}", channels, full)}
    model = CifarWideResNet(depth, widen_factor, num_classes, drop_rate)
    widths = model.feat_channels
    c0 = kept["stem"]
    model.stem = PrunedConv2d(3, c0, 3, 1, 1, bias=False, width=widths[0]) if c0 < widths[0] else model.stem
    n, groups = (depth - 4) // 6, []
    for g in range(3):
        blocks = []
        for i in range(n):
            p = f"groups.{g}.{i}."
            cin, stride = (widths[g] if i == 0 else widths[g + 1]), ((1 if g == 0 else 2) if i == 0 else 1)
            cs = kept.get(p + "shortcut", widths[g + 1])
            blocks.append(
                PrunedPreActBlock(cin, widths[g + 1], stride, drop_rate, kept[p + "conv1"], kept[p + "conv2"], cs)
            )
        groups.append(nn.Sequential(*blocks))
    model.groups = nn.ModuleList(groups)
    return model


# ------------------------------------------------------------------------------------------------ SSL WRN
def ssl_wrn_conv_widths(model: nn.Module) -> dict[str, int]:
    """Every prunable conv of an SSL WideResNet (wrn.py) by module name, with its full number of filters."""
    out = {"stem": model.feat_channels[0]}
    for g, group in enumerate(model.groups):
        for i, block in enumerate(group):
            width = model.feat_channels[g + 1]
            out[f"groups.{g}.{i}.conv1"] = out[f"groups.{g}.{i}.conv2"] = width
            if block.shortcut is not None:
                out[f"groups.{g}.{i}.shortcut"] = width
    return out


def _like(conv: nn.Conv2d, in_ch: int, n: int, width: int | None, fold: bool = False) -> nn.Conv2d:
    """A conv like `conv` (kernel, stride, padding, bias) with in_ch inputs and n filters (written into `width`)."""
    args = (conv.kernel_size, conv.stride, conv.padding)
    return PrunedConv2d(in_ch, n, *args, bias=conv.bias is not None, width=width, fold=fold)


def narrow_ssl_wrn(model: nn.Module, arch: str, channels: Mapping[str, int]) -> nn.Module:
    """Narrow an SSL WideResNet in place: conv1 (and bn2) to its kept filters, conv2 / shortcut / stem to theirs,
    written into the stream by PrunedConv2d, so the blocks' forward (and its reference quirks) is unchanged."""
    full = ssl_wrn_conv_widths(model)
    kept = {**full, **_check(arch, channels, full)}
    model.stem = _like(model.stem, 3, kept["stem"], full["stem"])
    for g, group in enumerate(model.groups):
        for i, block in enumerate(group):
            p, width = f"groups.{g}.{i}.", full[f"groups.{g}.{i}.conv2"]
            c1 = kept[p + "conv1"]
            block.conv1 = _like(block.conv1, block.conv1.in_channels, c1, None)
            block.bn2 = nn.BatchNorm2d(c1, momentum=block.bn2.momentum, eps=block.bn2.eps)
            block.conv2 = _like(block.conv2, c1, kept[p + "conv2"], width, fold=c1 < width)
            if block.shortcut is not None:
                block.shortcut = _like(block.shortcut, block.shortcut.in_channels, kept[p + "shortcut"], width)
    return model


# ------------------------------------------------------------------------------------------------ torchvision ResNet
def tv_resnet_conv_widths(bottleneck: bool, layers: list[int] | tuple[int, ...]) -> dict[str, int]:
    """The prunable convs of a torchvision ResNet (resnet.py) by module name, with their full number of filters:
    the inner convs of each block only (Bottleneck conv1 and conv2, BasicBlock conv1), whose outputs feed the next
    conv of the same block. The stem, the block outputs (which write the residual stream) and the downsample convs
    keep their width."""
    out = {}
    for s, n in enumerate(layers):
        planes = 64 * 2**s  # torchvision's width_per_group 64, groups 1
        for b in range(n):
            for conv in ("conv1", "conv2") if bottleneck else ("conv1",):
                out[f"layer{s + 1}.{b}.{conv}"] = planes
    return out


def _narrow(conv: nn.Conv2d, in_ch: int, n: int, fold: bool) -> PrunedConv2d:
    """A conv like `conv` (kernel, stride, padding, dilation, bias) with in_ch inputs and n filters, torchvision's
    init; `fold` when its input was narrowed."""
    args = (conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    new = PrunedConv2d(in_ch, n, *args, bias=conv.bias is not None, fold=fold)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new


def narrow_tv_resnet(model: nn.Module, arch: str, channels: Mapping[str, int]) -> nn.Module:
    """Narrow a torchvision ResNet (resnet.py `ResNet`) in place: each block's inner convs to their kept filters,
    their BNs to those channels, the convs that read them to those inputs (plus the `fold` of what removed
    channels still fed them). torchvision's block classes and forward are kept: only the modules' widths change."""
    from torchvision.models.resnet import Bottleneck

    bottleneck = model._block is Bottleneck
    full = tv_resnet_conv_widths(bottleneck, model._layers)
    kept = {**full, **_check(arch, channels, full)}
    for s, layer in enumerate(model.stages):
        for b, block in enumerate(layer):
            p, width = f"layer{s + 1}.{b}.", 64 * 2**s
            c1 = kept[p + "conv1"]
            block.conv1 = _narrow(block.conv1, block.conv1.in_channels, c1, fold=False)
            block.bn1 = nn.BatchNorm2d(c1)
            if bottleneck:
                c2 = kept[p + "conv2"]
                block.conv2 = _narrow(block.conv2, c1, c2, fold=c1 < width)
                block.bn2 = nn.BatchNorm2d(c2)
                block.conv3 = _narrow(block.conv3, c2, block.conv3.out_channels, fold=c2 < width)
            else:
                block.conv2 = _narrow(block.conv2, c1, block.conv2.out_channels, fold=c1 < width)
    return model
