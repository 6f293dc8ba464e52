"""torchvision's RegNetY-16GF under the model contract: CSKD's ImageNet teacher (the DeiT recipe distils
RegNetY-16GF into DeiT-Ti / DeiT-S; Zzzzz1/CSKD@fa0d8b8 follows DeiT's ``--teacher-model regnety_160``).

The modules keep torchvision's names (``stem``, ``trunk_output.block1..4``, ``fc``), so
``pretrained: IMAGENET1K_V1`` (or V2, SWAG) loads torchvision's weights directly. The stem and the four blocks are
the contract's stages (RegNetY-16GF: 32, 224, 448, 1232, 3024 channels).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import regnet as tv

from ssl_kd.models.base import ClassifierModel
from ssl_kd.models.registry import register_model


class RegNet(ClassifierModel):
    def __init__(self, net: tv.RegNet) -> None:
        super().__init__()
        self.stem, self.trunk_output, self.fc = net.stem, net.trunk_output, net.fc
        self.num_classes, self.feat_dim = net.fc.out_features, net.fc.in_features
        widths = [b.proj.out_channels if b.proj is not None else None for b in self._first_blocks()]
        self.feat_channels = (net.stem[0].out_channels, *widths)

    def _first_blocks(self) -> list[nn.Module]:
        return [stage[0] for stage in self.trunk_output]

    @property
    def stages(self) -> list[nn.Module]:
        return list(self.trunk_output)


@register_model("regnet_y_400mf")
def regnet_y_400mf(num_classes: int) -> RegNet:
    """RegNetY-400MF (4.3 M parameters at 1000 classes): the small member of the family, for tests and quick runs."""
    return RegNet(tv.regnet_y_400mf(num_classes=num_classes))


@register_model("regnet_y_16gf")
def regnet_y_16gf(num_classes: int) -> RegNet:
    """RegNetY-16GF (83.6 M parameters at 1000 classes), torchvision's layers and initialisation."""
    return RegNet(tv.regnet_y_16gf(num_classes=num_classes))
