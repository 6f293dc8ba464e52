"""Tiny models for tests and the quickstart (8x8 digits): seconds to train on a CPU, same output contract."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel
from ssl_kd.models.registry import check_option, register_model


class MLP(ClassifierModel):
    """Pool the image to a fixed grid, flatten, then ``depth`` Linear-ReLU blocks.

    The fixed-grid pool makes the input layer independent of the image size (any size works).
    """

    def __init__(self, num_classes: int, hidden: int = 128, depth: int = 2, in_chans: int = 3, grid: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool2d(grid)
        dims = [in_chans * grid * grid] + [hidden] * depth
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.ReLU()) for i in range(depth))
        self.fc = nn.Linear(hidden, num_classes)
        self.feat_dim = hidden
        self.feat_channels = (hidden,) * depth

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        out = torch.flatten(self.pool(x), 1)
        maps = []
        for block in self.blocks:
            out = block(out)
            maps.append(out)
        return maps, out


class SmallCNN(ClassifierModel):
    """conv stem (w) -> two stride-2 conv blocks (2w, 4w) -> global pool -> fc."""

    def __init__(self, num_classes: int, width: int = 32, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        chans = (width, 2 * width, 4 * width)

        def block(i: int, o: int, s: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.stem = block(in_chans, chans[0], 1)
        self.stages = nn.ModuleList([block(chans[0], chans[1], 2), block(chans[1], chans[2], 2)])
        self.fc = nn.Linear(chans[2], num_classes)
        self.feat_dim = chans[2]
        self.feat_channels = chans


@register_model("mlp")
def mlp(num_classes: int, hidden: int = 128, depth: int = 2, in_chans: int = 3, grid: int = 8) -> MLP:
    """MLP on an image pooled to ``grid`` x ``grid``; feats = each hidden layer's output."""
    check_option("mlp", "hidden", hidden, isinstance(hidden, int) and hidden >= 1, "a positive integer")
    check_option("mlp", "depth", depth, isinstance(depth, int) and depth >= 1, "a positive integer")
    check_option("mlp", "in_chans", in_chans, isinstance(in_chans, int) and in_chans >= 1, "a positive integer")
    check_option("mlp", "grid", grid, isinstance(grid, int) and grid >= 1, "a positive integer")
    return MLP(num_classes, hidden, depth, in_chans, grid)


@register_model("cnn_small")
def cnn_small(num_classes: int, width: int = 32, in_chans: int = 3) -> SmallCNN:
    """Three conv blocks; feats = stem and the two stride-2 stages."""
    check_option("cnn_small", "width", width, isinstance(width, int) and width >= 1, "a positive integer")
    check_option("cnn_small", "in_chans", in_chans, isinstance(in_chans, int) and in_chans >= 1, "a positive integer")
    return SmallCNN(num_classes, width, in_chans)
