"""Heads that methods attach to a model's features (the contract's `feat` / `feats`), never inside the model: a
normalised linear embedding (CTC/CRD's projections), a two-layer MLP head (SSKD's projection, MCL's embedding),
connectors that map a student feature to a teacher's width (feature losses), PAD's variance branch, and a linear
probe over a frozen feature extractor. A stage registers them (`Stage.register_module`), so they train and
checkpoint with it."""

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


class MLPHead(nn.Module):
    """Linear -> ReLU -> Linear on a pooled feature, optionally L2-normalised: SSKD's projection head
    (d -> d -> d, wrapper.py) and MCL's embedding (d -> 128 -> 128, then L2 norm)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, normalize: bool = False, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, dim_out))
        self.normalize = normalize

    def forward(self, feat: Tensor) -> Tensor:
        out = self.net(feat.flatten(1))
        return F.normalize(out, dim=1) if self.normalize else out


class VarianceHead(nn.Module):
    """PAD's variance branch (torchdistill `VarianceBranch4PAD`): Linear(d, d) -> BatchNorm1d(d) on a pooled
    feature, read as the per-dimension log-variance s = log sigma^2 of the feature it is compared with."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim))

    def forward(self, feat: Tensor) -> Tensor:
        return self.net(feat.flatten(1))


ConnectorKind = Literal["identity", "linear", "conv_bn"]


class Connector(nn.Module):
    """Maps a student feature to the teacher's width for a feature loss: `linear` on pooled vectors (B, c_in),
    `conv_bn` (1x1 conv + BatchNorm, FitNets / torchdistill's regressor) on maps (B, c_in, H, W), or `identity`
    (equal widths, nothing to learn). Build it with `connector_for` from the two models' `feat_channels`."""

    def __init__(self, kind: ConnectorKind, c_in: int, c_out: int, seed: int = 0) -> None:
        super().__init__()
        if kind == "identity" and c_in != c_out:
            raise ValueError(f"an identity connector needs equal widths, got student {c_in} and teacher {c_out}")
        self.kind = kind
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "linear":
                self.body: nn.Module = nn.Linear(c_in, c_out)
            elif kind == "conv_bn":
                self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
            else:
                self.body = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def connector_for(
    kind: ConnectorKind | Literal["auto"],
    student: nn.Module,
    teacher: nn.Module,
    index: int | None = None,
    seed: int = 0,
) -> Connector:
    """A connector from a student feature to the teacher's width: the pooled feature (`index` None, widths from
    `feat_dim`) or entry `index` of `feats` (widths from `feat_channels`). `auto`: identity when the widths match,
    else `linear` for the pooled feature and `conv_bn` for a map."""
    if index is None:
        c_in, c_out, default = student.feat_dim, teacher.feat_dim, "linear"
    else:
        c_in, c_out, default = student.feat_channels[index], teacher.feat_channels[index], "conv_bn"
    if kind == "auto":
        kind = "identity" if c_in == c_out else default
    return Connector(kind, c_in, c_out, seed)


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
