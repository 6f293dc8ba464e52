"""Heads that methods attach to a model's pooled feature (the contract's `feat`), never inside the model: a
normalised linear embedding (CTC/CRD's projections) and a linear probe over a frozen feature extractor."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def seeded_linear(dim_in: int, dim_out: int, seed: int) -> nn.Linear:
    """nn.Linear with torch's default initialisation (weight and bias ~ U(-1/sqrt(dim_in), 1/sqrt(dim_in))) drawn
    from its own generator: the same layer on every rank, whatever the global RNG has done."""
    layer = nn.Linear(dim_in, dim_out)
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim_in)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(dim_out, dim_in, generator=gen) * (2 * bound) - bound)
        layer.bias.copy_(torch.rand(dim_out, generator=gen) * (2 * bound) - bound)
    return layer


class Embed(nn.Module):
    """Linear projection then L2 normalisation (CRD's `Embed`, the g_s / g_t heads of CTC's stage 2)."""

    def __init__(self, dim_in: int, dim_out: int, seed: int) -> None:
        super().__init__()
        self.linear = seeded_linear(dim_in, dim_out, seed)

    def forward(self, feat: Tensor) -> Tensor:
        return F.normalize(self.linear(feat.flatten(1)), dim=1)


class LinearProbe(nn.Module):
    """A frozen feature extractor (any model of the output contract: its pooled `feat`) and a fresh linear head.

    `bn_mode`: "train" keeps the extractor in train mode while the probe trains, so its BatchNorm layers normalise
    with batch statistics and their running statistics adapt to the probe's data (CTC's `transfer.py` calls
    `net.train()`; dropout, if any, is active too); "eval" freezes them. Only the head has trainable parameters.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, feat_dim: int, bn_mode: Literal["train", "eval"]):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.head = nn.Linear(feat_dim, num_classes)
        self.bn_mode = bn_mode
        self.train()

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.train(mode and self.bn_mode == "train")
        return self

    def forward(self, x: Tensor, **inputs: Any) -> Tensor:
        with torch.no_grad():
            feat = self.backbone(x, **inputs).feat
        return self.head(feat)

    def predict(self, batch: Mapping[str, Any]) -> Tensor:
        inputs = self.backbone.inputs_from(batch) if getattr(self.backbone, "extra_inputs", ()) else {}
        return self(batch["x"], **inputs)
