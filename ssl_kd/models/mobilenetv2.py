"""MobileNetV2 as the KD literature uses it on CIFAR (RepDistiller ``mobile_half``, also in mdistiller).

Differences from torchvision's MobileNetV2 that matter for reproducing those numbers: the expansion 1x1 conv
is kept even when t=1, ReLU (not ReLU6), stem stride 2 (so 32px -> 2x2 at the end), the final 1x1 conv has
1280 channels unless width_mult > 1, and the classifier is a bare Linear (no dropout).
"""

from __future__ import annotations

from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel, repdistiller_init
from ssl_kd.models.registry import check_option, register_model


def _conv_bn_relu(in_ch: int, out_ch: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            _conv_bn_relu(in_ch, hidden, 1, 1),
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(ClassifierModel):
    # (expansion t or None for "use expand_ratio", channels c, repeats n, first stride s)
    SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
               (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))  # fmt: skip
    # feats are taken after these block groups (0-based), as RepDistiller's f1..f4
    TAPS = (1, 2, 4, 6)

    def __init__(self, num_classes: int, width_mult: float = 0.5, expand_ratio: int = 6) -> None:
        super().__init__()
        self.num_classes = num_classes
        in_ch = int(32 * width_mult)
        self.stem = _conv_bn_relu(3, in_ch, 3, 2)
        blocks, channels = [], [in_ch]
        for i, (t, c, n, s) in enumerate(self.SETTING):
            out_ch = int(c * width_mult)
            layers = []
            for j in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if j == 0 else 1, t or expand_ratio))
                in_ch = out_ch
            blocks.append(nn.Sequential(*layers))
            if i in self.TAPS:
                channels.append(out_ch)
        self.blocks = nn.ModuleList(blocks)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv_last = _conv_bn_relu(in_ch, last, 1, 1)
        self.fc = nn.Linear(last, num_classes)
        self.feat_dim = last
        self.feat_channels = tuple(channels)
        repdistiller_init(self, linear_std=0.01)  # RepDistiller's init

    def forward_map(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        out = self.stem(x)
        maps = [out]
        for i, block in enumerate(self.blocks):
            out = block(out)
            if i in self.TAPS:
                maps.append(out)
        return maps, self.conv_last(out)


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, width_mult: float = 0.5, expand_ratio: int = 6) -> MobileNetV2:
    """MobileNetV2; the default (width 0.5, t=6) is RepDistiller's ``mobile_half`` (the KD "MobileNetV2")."""
    check_option(
        "mobilenetv2",
        "width_mult",
        width_mult,
        width_mult > 0 and int(16 * width_mult) >= 1,
        "a positive float (>= 0.0625)",
    )
    check_option(
        "mobilenetv2",
        "expand_ratio",
        expand_ratio,
        isinstance(expand_ratio, int) and expand_ratio >= 1,
        "a positive integer",
    )
    return MobileNetV2(num_classes, width_mult, expand_ratio)
