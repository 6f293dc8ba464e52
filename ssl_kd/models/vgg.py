"""The CIFAR VGGs of the KD literature (RepDistiller / mdistiller ``vgg8`` = vgg8_bn, ``vgg13`` = vgg13_bn).

Five conv blocks (3x3 conv with bias + BN + ReLU; a block's last ReLU is applied outside it so ``feats`` could
expose the pre-activation), max-pool 2x2 after blocks 0-2, global average pool, one Linear. The reference skips the
fourth max-pool on 32px inputs (it only pools when the input is 64px); here it pools for inputs of 64px or more.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel, repdistiller_init
from ssl_kd.models.registry import register_model

# channels of each conv in each of the five blocks
LAYOUTS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


def _block(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_ch = w
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward_features


class CifarVGG(ClassifierModel):
    def __init__(self, layout: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        ins = (3, *(b[-1] for b in layout[:-1]))
        self.blocks = nn.ModuleList(_block(i, b) for i, b in zip(ins, layout))
        self.fc = nn.Linear(layout[-1][-1], num_classes)
        self.feat_dim = layout[-1][-1]
        self.feat_channels = tuple(b[-1] for b in layout)
        repdistiller_init(self, linear_std=0.01)  # RepDistiller's init

    def forward_map(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        pool_four = x.shape[-2] >= 64
        maps = []
        out = x
        for i, block in enumerate(self.blocks):
            out = F.relu(block(out))
            maps.append(out)
            if i < 3 or (i == 3 and pool_four):
                out = F.max_pool2d(out, 2)
        return maps, out


def _register(name: str) -> None:
    def factory(num_classes: int) -> CifarVGG:
        return CifarVGG(LAYOUTS[name], num_classes)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR {name} with BatchNorm (RepDistiller/mdistiller '{name}')."
    register_model(name)(factory)


for _name in LAYOUTS:
    _register(_name)
