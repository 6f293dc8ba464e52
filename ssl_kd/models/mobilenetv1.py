"""MobileNetV1 as mdistiller's ImageNet student (ResNet-50 -> MobileNetV1, the DOT / DKD / KD tables).

The layer list of megvii-research/mdistiller@fae6658 mdistiller/models/imagenet/mobilenetv1.py: a 3x3/2 conv to
32 channels, then 13 depthwise-separable blocks (3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU), global
average pooling and a 1024 -> C classifier, with PyTorch's default initialisation; 4,231,976 parameters at 1000
classes (the reference's count: same layers). The blocks keep the reference's names (``model.<i>``), so its state
dicts load. The reference pools with a fixed 7x7 window (224 px only); this pools globally (the same at 224 px,
and any size works).

Under the model contract: ``stem`` is the first conv and the first block (64 channels, stride 2); the four stages
end where mdistiller's four features are taken (128 / 256 / 512 / 1024 channels at strides 4 / 8 / 16 / 32).
"""

from __future__ import annotations

from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel
from ssl_kd.models.registry import register_model

# (out channels, stride) of the 13 depthwise-separable blocks after the 32-channel first conv
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))
_STAGE_ENDS = (2, 4, 6, 12, 14)  # stem = model[0:2]; stages = model[2:4], [4:6], [6:12], [12:14]


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class MobileNetV1(ClassifierModel):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers, cin = [_conv_bn(3, 32, 2)], 32
        for cout, stride in _BLOCKS:
            layers.append(_separable(cin, cout, stride))
            cin = cout
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)
        self.num_classes, self.feat_dim = num_classes, 1024
        self.feat_channels = (64, 128, 256, 512, 1024)

    def stem(self, x: Tensor) -> Tensor:
        return self.model[: _STAGE_ENDS[0]](x)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.model[a:b] for a, b in zip(_STAGE_ENDS, _STAGE_ENDS[1:])]


@register_model("mobilenetv1")
def mobilenetv1(num_classes: int) -> MobileNetV1:
    """MobileNetV1 (width 1.0), mdistiller's ImageNet student: 4.23 M parameters at 1000 classes."""
    return MobileNetV1(num_classes)
