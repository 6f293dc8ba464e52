"""Which convs of a model can lose filters, and what each one's filters are tied to.

A unit is one conv: its BN (the BN that normalises exactly this conv's output channels, masked with it), the conv
that reads only its output (whose input channels the export cuts), and its role. Supported: the CIFAR ResNets
(`resnet8` ... `resnet110`, `resnet8x4`, `resnet32x4`), the KD-literature WRNs (`wrn_16_1` ... `wrn_40_2`), the
SSL WRNs (`wrn_28_2`, `wrn_28_8`, `wrn_var_37_2`) and torchvision's ResNets (`resnet18`, `resnet34`, `resnet50`),
pruned or not.

On torchvision's ResNets only the inner convs of each residual block are units (Bottleneck conv1 and conv2,
BasicBlock conv1: role "inner"); the stem, the block outputs (conv3 / BasicBlock conv2, which write the residual
stream) and the downsample convs keep their width, the usual choice of ResNet-50 pruning recipes that keep the
residual stream whole. PGMPF's ImageNet script also masks the stem and the block outputs
(`--layer_begin 0 --layer_end 156 --layer_inter 3`), so its FLOP reduction at the same keep ratio is larger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn
from torchvision.models import resnet as tv

from ssl_kd.errors import UserError
from ssl_kd.models.cifar_resnet import CifarResNet
from ssl_kd.models.cifar_wrn import CifarWideResNet
from ssl_kd.models.pruned import resnet_conv_widths, ssl_wrn_conv_widths, tv_resnet_conv_widths, wrn_conv_widths
from ssl_kd.models.resnet import ResNet
from ssl_kd.models.wrn import SSLWideResNet

Role = Literal["inner", "stream", "shortcut"]


@dataclass(frozen=True)
class Unit:
    name: str  # the conv's module name
    bn: str | None  # the BN over exactly this conv's output channels
    consumer: str | None  # the conv that reads only this conv's output ("inner" units)
    role: Role  # inner: feeds the next conv of its block; stream: writes the residual stream; shortcut: downsample
    index_key: str | None = None  # the pruned model's buffer of stream channels written (stream / shortcut)
    const_key: str | None = None  # the pruned model's buffer of a removed channel's constant output (after a BN)
    act: str | None = None  # what follows the BN before the constant reaches its reader: "relu" or a module name


def _resnet_units(depth: int, widths: tuple[int, ...]) -> list[Unit]:
    units = []
    for name in resnet_conv_widths(depth, widths):
        if name == "stem.0":
            units.append(Unit(name, "stem.1", None, "stream", "stem.3.index", "stem.3.fill", "relu"))
        elif name.endswith("conv1"):
            p = name.removesuffix("conv1")
            units.append(Unit(name, p + "bn1", p + "conv2", "inner", act="relu"))
        elif name.endswith("conv2"):  # bn2's constant is added to the stream before the block's ReLU
            p = name.removesuffix("conv2")
            units.append(Unit(name, p + "bn2", None, "stream", p + "keep2", p + "bias2"))
        else:
            p = name.removesuffix("0")
            units.append(Unit(name, p + "1", None, "shortcut", p + "2.index", p + "2.fill"))
    return units


def _wrn_units(depth: int, widen: int) -> list[Unit]:
    units = []
    for name in wrn_conv_widths(depth, widen):
        if name == "stem":
            units.append(Unit(name, None, None, "stream", "stem.index"))
        elif name.endswith("conv1"):  # pre-activation: bn2 and its ReLU read conv1
            p = name.removesuffix("conv1")
            units.append(Unit(name, p + "bn2", p + "conv2", "inner", act=p + "relu"))
        elif name.endswith("conv2"):
            units.append(Unit(name, None, None, "stream", name.removesuffix("conv2") + "keep2"))
        else:
            units.append(Unit(name, None, None, "shortcut", name + ".index"))
    return units


def _ssl_wrn_units(model: SSLWideResNet) -> list[Unit]:
    units = []
    for name in ssl_wrn_conv_widths(model):
        if name.endswith("conv1"):  # pre-activation: bn2 and its LeakyReLU read conv1
            p = name.removesuffix("conv1")
            units.append(Unit(name, p + "bn2", p + "conv2", "inner", act=p + "act2"))
        else:  # stem, conv2, shortcut: write into the stream through a PrunedConv2d
            units.append(Unit(name, None, None, "shortcut" if name.endswith("shortcut") else "stream", name + ".index"))
    return units


def _tv_resnet_units(model: ResNet) -> list[Unit]:
    bottleneck = model._block is tv.Bottleneck
    units = []
    for name in tv_resnet_conv_widths(bottleneck, model._layers):  # inner convs only: their BN's ReLU feeds the reader
        p, conv = name.rsplit(".", 1)
        i = int(conv.removeprefix("conv"))
        units.append(Unit(name, f"{p}.bn{i}", f"{p}.conv{i + 1}", "inner", act="relu"))
    return units


SUPPORTED = (
    "the CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4), the KD WRNs (wrn_16_1 ... wrn_40_2), the "
    "SSL WRNs (wrn_28_2, wrn_28_8, wrn_var_37_2) and torchvision's ResNets (resnet18, resnet34, resnet50: the inner "
    "convs of each block)"
)


def prunable_units(model: nn.Module, where: str = "prune") -> list[Unit]:
    """Every conv of `model` that filter pruning may narrow, in forward order."""
    spec = getattr(model, "spec", None) or {}
    arch = spec.get("arch", type(model).__name__)
    if isinstance(model, CifarResNet):
        return _resnet_units(len(model.stages[0]) * 6 + 2, tuple(model.feat_channels))  # full widths, pruned or not
    if isinstance(model, CifarWideResNet):
        return _wrn_units(len(model.groups[0]) * 6 + 4, model.feat_channels[1] // 16)
    if isinstance(model, SSLWideResNet):
        return _ssl_wrn_units(model)
    if isinstance(model, ResNet):
        return _tv_resnet_units(model)
    raise UserError(f"{where}: filter pruning does not know the layers of model '{arch}'; it supports {SUPPORTED}.")
