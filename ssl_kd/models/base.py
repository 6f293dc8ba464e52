"""The one output contract every model follows, and a base class that enforces it.

Methods that need features (feature KD, contrastive heads, FullMatch's EML on logits) read them from
``ModelOutput`` instead of reaching into a model's modules, so any registered model can be swapped in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    """``logits`` (B, C); ``feat`` (B, D) pooled feature the classifier reads; ``feats`` the stem output and
    each stage output (only when ``return_feats=True``, else ``None``)."""

    logits: Tensor
    feat: Tensor
    feats: tuple[Tensor, ...] | None = None


class ClassifierModel(nn.Module):
    """Feature extractor + linear ``fc`` head.

    ``forward_features(x) -> (stage_maps, pooled)`` has a default for stem -> stages models. Keeping the
    classifier in one attribute (``fc``) lets stages re-apply it to mixed or memorised features without a
    second forward.
    ``feat_channels`` gives the channel count of each entry of ``feats`` (feature-KD connectors need it).
    """

    num_classes: int
    feat_dim: int
    feat_channels: tuple[int, ...]
    fc: nn.Linear

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The common shape (``stem`` then ``stages``): every stage output is a feature map, pooled after
        ``pre_pool``. Models of another shape override this."""
        out = self.stem(x)
        maps = [out]
        for stage in self.stages:
            out = stage(out)
            maps.append(out)
        return maps, global_pool(self.pre_pool(out))

    def pre_pool(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, return_feats: bool = False) -> ModelOutput:
        maps, feat = self.forward_features(x)
        logits = self.fc(feat)
        return ModelOutput(logits, feat, tuple(maps) if return_feats else None)


def global_pool(x: Tensor) -> Tensor:
    """Adaptive average pool to 1x1 and flatten, so any input size >= 8px works (the reference repos hard-code
    ``AvgPool2d(8)``, which silently assumes 32px inputs)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def repdistiller_init(model: nn.Module, linear_std: float | None) -> None:
    """The KD repos' (RepDistiller/mdistiller) init: conv N(0, sqrt(2 / (k*k*out))) i.e. kaiming fan_out, zero conv
    bias, BN 1/0, Linear bias 0 and weight N(0, linear_std) (None keeps torch's default Linear weight init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
