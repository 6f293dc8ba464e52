"""Metadata heads on the pooled image feature: DynamicMLP (variants A/B/C) and the concatenation baseline.

DynamicMLP (Yang et al., CVPR 2022; ylingfeng/DynamicMLP@773197c5 models/dynamic_mlp.py): the encoded
location/date ``meta`` goes through the location net (FCNet, 256 wide) to an ``mlp_d``-d embedding ``loc`` (FCNet's
``num_classes=mlp_d`` in models/resnet_dynamic_mlp.py, every block's ``loc_planes=planes``); the pooled image feature
``img`` is projected to ``mlp_d``, passed through ``mlp_n`` dynamic blocks whose per-sample weights are generated
from ``loc`` (A), from ``loc`` with a separate image branch (B) or from concat[h, loc] (C, default), projected back
to the feature width with a LayerNorm, and added to ``img``; the backbone's ``fc`` reads the sum.

Any registered model carries it: ``create_model("resnet50", C, head={"type": "dynamic_mlp", "variant": "c"})`` or
in YAML ``models.net: {arch: resnet50, head: {type: dynamic_mlp, variant: c}}``. The model then declares the
extra input ``meta`` (``ClassifierModel.extra_inputs``), which the data layer provides (``data.metadata``).
``{type: concat}`` is the simple baseline users compare against: fc(concat[img, FCNet(meta)]). The image-only
baseline is the backbone without a head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ssl_kd.errors import UserError
from ssl_kd.models.base import ClassifierModel
from ssl_kd.models.registry import check_option, register_head

Variant = Literal["a", "b", "c"]


class FCResLayer(nn.Module):
    """x + ReLU(W2 Dropout(ReLU(W1 x))) (GeoPrior's residual layer, dropout 0.5)."""

    def __init__(self, width: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Linear(width, width), nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.relu(self.w2(self.dropout(torch.relu(self.w1(x)))))


class FCNet(nn.Module):
    """The location net: Linear(cin -> width) + ReLU, ``blocks`` residual layers, Linear(width -> out, no bias)."""

    def __init__(self, cin: int, out: int = 256, width: int = 256, blocks: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(cin, width), nn.ReLU()]
        layers += [FCResLayer(width, dropout) for _ in range(blocks)]
        self.feats = nn.Sequential(*layers)
        self.out = nn.Linear(width, out, bias=False)

    def forward(self, meta: Tensor) -> Tensor:
        return self.out(self.feats(meta))


def _lin_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout), nn.ReLU())


def _lin_ln_relu(c: int) -> nn.Sequential:
    """Bias-free Linear + LayerNorm + ReLU (the reference's ``Basic1d(bias=False)``)."""
    return nn.Sequential(nn.Linear(c, c, bias=False), nn.LayerNorm(c), nn.ReLU())


class DynamicBlock(nn.Module):
    """One dynamic projection c_in -> c_out with a per-sample weight W (B, c_in, c_out) generated from ``loc``.

    A: W = Linear(loc); y = ReLU(LN(h W)).
    B: h' = Lin(ReLU(Lin(h))), W = Lin(ReLU(Lin(loc))); y = ReLU(LN(h' W)); then ReLU(LN(Lin_nobias(y))).
    C: as B but both branches read concat[h, loc].
    """

    def __init__(self, c_in: int, c_out: int, loc_dim: int, variant: Variant = "c") -> None:
        super().__init__()
        self.c_in, self.c_out, self.variant = c_in, c_out, variant
        if variant == "a":
            self.get_weight = nn.Linear(loc_dim, c_in * c_out)
            self.norm = nn.LayerNorm(c_out)
            return
        src = c_in if variant == "b" else c_in + loc_dim
        self.img1, self.img2 = _lin_relu(src, c_in), nn.Linear(c_in, c_in)
        self.loc1 = _lin_relu(loc_dim if variant == "b" else src, c_in)
        self.loc2 = nn.Linear(c_in, c_in * c_out)
        self.norm = nn.LayerNorm(c_out)
        self.out = _lin_ln_relu(c_out)

    def forward(self, h: Tensor, loc: Tensor) -> Tensor:
        if self.variant == "a":
            w = self.get_weight(loc).view(-1, self.c_in, self.c_out)
            return torch.relu(self.norm(torch.bmm(h.unsqueeze(1), w).squeeze(1)))
        cat = torch.cat([h, loc], dim=1) if self.variant == "c" else None
        h2 = self.img2(self.img1(h if cat is None else cat))
        w = self.loc2(self.loc1(loc if cat is None else cat)).view(-1, self.c_in, self.c_out)
        y = torch.relu(self.norm(torch.bmm(h2.unsqueeze(1), w).squeeze(1)))
        return self.out(y)


class FusionModule(nn.Module):
    """img (B, D) -> Linear(D -> d) -> N dynamic blocks (d -> h -> ... -> d; N = 1: d -> d) -> LN(Linear(d -> D))
    + img. ``loc`` (B, d) is the same for every block: the reference's ``loc_planes`` is ``planes`` = d."""

    def __init__(self, feat_dim: int, d: int = 256, h: int = 64, n: int = 2, variant: Variant = "c") -> None:
        super().__init__()
        dims = [d, d] if n == 1 else [d] + [h] * (n - 1) + [d]
        self.proj_in = nn.Linear(feat_dim, d)
        self.blocks = nn.ModuleList(DynamicBlock(a, b, d, variant) for a, b in zip(dims[:-1], dims[1:]))
        self.proj_out = nn.Linear(d, feat_dim)
        self.norm = nn.LayerNorm(feat_dim)

    def forward(self, img: Tensor, loc: Tensor) -> Tensor:
        x = self.proj_in(img)
        for block in self.blocks:
            x = block(x, loc)
        return img + self.norm(self.proj_out(x))


class DynamicMLPHead(nn.Module):
    """The location net + fusion module: ``head(img, meta) -> fused feature`` of the image feature's width.
    The location embedding is ``mlp_d`` wide (FCNet 256 wide inside, as the reference)."""

    def __init__(self, feat_dim: int, meta_dim: int, variant: Variant = "c", mlp_d: int = 256, mlp_h: int = 64,
                 mlp_n: int = 2) -> None:  # fmt: skip
        super().__init__()
        self.meta_dim = meta_dim
        self.loc_net = FCNet(meta_dim, out=mlp_d)
        self.fusion = FusionModule(feat_dim, mlp_d, mlp_h, mlp_n, variant)
        self.out_dim = feat_dim

    def forward(self, feat: Tensor, meta: Tensor) -> Tensor:
        return self.fusion(feat, self.loc_net(_checked(meta, self.meta_dim)))


class ConcatHead(nn.Module):
    """Baseline: concat[img, FCNet(meta)], so fc reads feat_dim + loc_dim features."""

    def __init__(self, feat_dim: int, meta_dim: int, loc_dim: int = 256) -> None:
        super().__init__()
        self.meta_dim = meta_dim
        self.loc_net = FCNet(meta_dim, loc_dim)
        self.out_dim = feat_dim + loc_dim

    def forward(self, feat: Tensor, meta: Tensor) -> Tensor:
        return torch.cat([feat, self.loc_net(_checked(meta, self.meta_dim))], dim=1)


def _checked(meta: Tensor, dim: int) -> Tensor:
    if meta.ndim != 2 or meta.shape[1] != dim:
        raise UserError(
            f"the model's metadata head has meta_dim={dim} but the batch's `meta` has shape {tuple(meta.shape)}: set "
            f"models.<name>.head.meta_dim to match data.metadata.use (6 geo + temporal, 4 geo, 2 temporal)."
        )
    return meta


def _fit(model: nn.Module, head: nn.Module, kind: str) -> None:
    """Carry ``head`` between the pooled feature and fc (a new fc when the head changes the feature width)."""
    if not isinstance(model, ClassifierModel) or "fusion" in model._modules:
        raise UserError(f"head '{kind}': the model must be an ssl_kd ClassifierModel without another head.")
    model.fusion = head
    model.extra_inputs = ("meta",)
    if head.out_dim != model.fc.in_features:
        model.fc = nn.Linear(head.out_dim, model.fc.out_features)
    model.feat_dim = head.out_dim


def _check_meta_dim(kind: str, meta_dim: int) -> None:
    check_option(f"head {kind}", "meta_dim", meta_dim, meta_dim in (2, 4, 6), "2 (temporal), 4 (geo) or 6 (both)")


@register_head("dynamic_mlp")
def dynamic_mlp(model: nn.Module, variant: Variant = "c", meta_dim: int = 6, mlp_d: int = 256, mlp_h: int = 64,
                mlp_n: int = 2) -> None:  # fmt: skip
    """DynamicMLP on the pooled feature (defaults = the reference: C, d 256, h 64, N 2; meta_dim 6 = geo+temporal)."""
    check_option("head dynamic_mlp", "variant", variant, variant in ("a", "b", "c"), "a, b or c")
    _check_meta_dim("dynamic_mlp", meta_dim)
    for k, v in (("mlp_d", mlp_d), ("mlp_h", mlp_h), ("mlp_n", mlp_n)):
        check_option("head dynamic_mlp", k, v, isinstance(v, int) and v >= 1, "a positive integer")
    _fit(model, DynamicMLPHead(model.feat_dim, meta_dim, variant, mlp_d, mlp_h, mlp_n), "dynamic_mlp")


@register_head("concat")
def concat(model: nn.Module, meta_dim: int = 6) -> None:
    """Baseline: fc(concat[pooled feature, FCNet(meta)])."""
    _check_meta_dim("concat", meta_dim)
    _fit(model, ConcatHead(model.feat_dim, meta_dim), "concat")
