"""The one output contract every model follows, and a base class that enforces it.

Methods that need features (feature KD, contrastive heads, FullMatch's EML on logits) read them from
``ModelOutput`` instead of reaching into a model's modules, so any registered model can be swapped in.
"""

from __future__ import annotations

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
