"""torchvision ResNet-18/34/50 under the common output contract.

``cifar_stem=True`` swaps the 7x7/2 conv + max-pool stem for a 3x3/1 conv (no pool), the usual choice for
32px images; with it ``resnet50`` is the CIFAR "ResNet50" teacher of the KD literature (same layers and
parameter count as RepDistiller's). Layers come from torchvision so ImageNet weights load by name.
``channels={conv name: filters kept}`` builds the filter-pruned shape an export makes (each block's inner convs
narrowed: models/pruned.py), under the same parameter names.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torchvision.models import resnet as tv

from ssl_kd.models.base import ClassifierModel, kaiming_conv_bn_init
from ssl_kd.models.registry import register_model


class ResNet(ClassifierModel):
    def __init__(
        self,
        block: type[tv.BasicBlock] | type[tv.Bottleneck],
        layers: list[int],
        num_classes: int,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        net = tv.ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        # Same attribute names as torchvision, so its state_dicts load directly.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = net.fc
        self.num_classes = num_classes
        self.feat_dim = net.fc.in_features
        exp = block.expansion
        self.feat_channels = (64, 64 * exp, 128 * exp, 256 * exp, 512 * exp)
        self._block, self._layers = block, list(layers)

    # stage-based (ClassifierModel.forward_features) under torchvision's attribute names
    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def build_stage(self, index: int, in_channels: int, stride: int) -> nn.Module:
        """A fresh stage shaped like stage `index` (its blocks and width) reading `in_channels` at `stride`, with
        torchvision's initialisation: HSAKD's extra stride-1 branch after the last stage (winycg/HSAKD@c4be450
        models/resnet_imagenet.py `block_extractor4`)."""
        block, planes = self._block, 64 * 2**index
        width = planes * block.expansion
        down = None
        if stride != 1 or in_channels != width:
            down = nn.Sequential(nn.Conv2d(in_channels, width, 1, stride, bias=False), nn.BatchNorm2d(width))
        blocks = [block(in_channels, planes, stride, down)]
        blocks += [block(width, planes) for _ in range(1, self._layers[index])]
        stage = nn.Sequential(*blocks)
        kaiming_conv_bn_init(stage)
        return stage


def _build(
    arch: str, block: type[tv.BasicBlock] | type[tv.Bottleneck], layers: list[int], num_classes: int,
    cifar_stem: bool, zero_init_residual: bool, channels: Mapping[str, int] | None,
) -> ResNet:  # fmt: skip
    model = ResNet(block, layers, num_classes, cifar_stem, zero_init_residual)
    if channels:  # a filter-pruned shape (ssl_kd.prune's export): {conv name: filters kept}
        from ssl_kd.models.pruned import narrow_tv_resnet

        narrow_tv_resnet(model, arch, channels)
    return model


@register_model("resnet18")
def resnet18(
    num_classes: int, cifar_stem: bool = False, zero_init_residual: bool = False,
    channels: Mapping[str, int] | None = None,
) -> ResNet:  # fmt: skip
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return _build("resnet18", tv.BasicBlock, [2, 2, 2, 2], num_classes, cifar_stem, zero_init_residual, channels)


@register_model("resnet34")
def resnet34(
    num_classes: int, cifar_stem: bool = False, zero_init_residual: bool = False,
    channels: Mapping[str, int] | None = None,
) -> ResNet:  # fmt: skip
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); DM-KD's CIFAR-100 teacher with ``cifar_stem: true``."""
    return _build("resnet34", tv.BasicBlock, [3, 4, 6, 3], num_classes, cifar_stem, zero_init_residual, channels)


@register_model("resnet50")
def resnet50(
    num_classes: int, cifar_stem: bool = False, zero_init_residual: bool = False,
    channels: Mapping[str, int] | None = None,
) -> ResNet:  # fmt: skip
    """ResNet-50 (Bottleneck, [3, 4, 6, 3], stride on the 3x3 conv as in torchvision v1.5)."""
    return _build("resnet50", tv.Bottleneck, [3, 4, 6, 3], num_classes, cifar_stem, zero_init_residual, channels)
