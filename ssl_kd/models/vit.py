"""Vision Transformer students built from torchvision's ``VisionTransformer`` (no new dependency).

Tokens: [class, (distillation), patch_1 .. patch_hw], each patch token a ``patch_size`` square of the image. Three
linear heads read them:

* ``fc`` on the class token: the logits (torchvision's ``heads.head``, zero-initialised as torchvision does);
* ``dist_head`` on the DeiT distillation token (``dist_token: true``), in ``aux["dist"]``;
* ``patch_head`` on every patch token: dense per-patch logits (B, C, h, w) in ``aux["dense"]`` when the forward is
  called with ``return_dense=True`` (the model contract's dense logits; CSKD distils a CNN's spatial responses into
  them). ``dense_head="dist"`` reads the patch tokens with ``dist_head`` instead, as CSKD's official code does
  (Zzzzz1/CSKD@fa0d8b8, cskd/models/vision_transformer.py ``VisionTransformer.forward``).

``feats`` are the patch tokens as (B, D, h, w) maps after the embedding and after each encoder block. With a
distillation token, ``predict`` scores the mean of the two heads (DeiT's test-time rule) as the headline, and each
head alone as ``cls`` / ``dist``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

from ssl_kd.models.base import ClassifierModel, ModelOutput, Prediction, select_maps
from ssl_kd.models.registry import check_option, register_model


class ViT(ClassifierModel):
    def __init__(
        self,
        num_classes: int,
        image_size: int,
        patch_size: int,
        depth: int,
        dim: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        dist_token: bool = False,
    ) -> None:
        super().__init__()
        vit = VisionTransformer(
            image_size, patch_size, depth, heads, dim, mlp_dim, dropout, attention_dropout, num_classes
        )
        self.num_classes, self.image_size, self.patch_size = num_classes, image_size, patch_size
        self.grid = image_size // patch_size
        self.conv_proj, self.class_token, self.encoder = vit.conv_proj, vit.class_token, vit.encoder
        self.fc = vit.heads.head
        self.patch_head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.patch_head.weight)  # as torchvision's class head
        nn.init.zeros_(self.patch_head.bias)
        self.num_prefix = 1
        if dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
            nn.init.trunc_normal_(self.dist_token, std=0.02)  # DeiT's token init
            extra = torch.empty(1, 1, dim).normal_(std=0.02)  # torchvision's position-embedding init, one more row
            pos = self.encoder.pos_embedding.data
            self.encoder.pos_embedding = nn.Parameter(torch.cat([pos[:, :1], extra, pos[:, 1:]], dim=1))
            self.dist_head = nn.Linear(dim, num_classes)
            nn.init.zeros_(self.dist_head.weight)
            nn.init.zeros_(self.dist_head.bias)
            self.num_prefix = 2
        else:
            self.dist_token, self.dist_head = None, None
        self.feat_dim = dim
        self.feat_channels = (dim,) * (depth + 1)

    def tokens(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The encoder's output tokens (B, prefix + h*w, D) and the patch-token maps after the embedding and after
        each block (torchvision's ``Encoder.forward``, unrolled to collect them)."""
        h, w = x.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"ViT built for {self.image_size}x{self.image_size} images got {h}x{w}; set the model's "
                f"image_size option (models.<name>.kwargs.image_size) to the data's image size"
            )
        n = x.shape[0]
        t = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D)
        prefix = [self.class_token.expand(n, -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(n, -1, -1))
        t = torch.cat([*prefix, t], dim=1) + self.encoder.pos_embedding
        t = self.encoder.dropout(t)
        maps = [self._grid(t)]
        for block in self.encoder.layers:
            t = block(t)
            maps.append(self._grid(t))
        return self.encoder.ln(t), maps

    def _grid(self, t: Tensor) -> Tensor:
        return t[:, self.num_prefix :].transpose(1, 2).reshape(t.shape[0], -1, self.grid, self.grid)

    def forward(
        self,
        x: Tensor,
        return_feats: bool | Sequence[int] = False,
        return_dense: bool = False,
        dense_head: Literal["patch", "dist"] = "patch",
        **inputs: Tensor,
    ) -> ModelOutput:
        if inputs:
            self._bad_inputs(inputs)
        t, maps = self.tokens(x)
        feat = t[:, 0]
        aux: dict[str, Tensor] = {}
        if self.dist_token is not None:
            aux["dist"] = self.dist_head(t[:, 1])
        if return_dense:
            aux["dense"] = self._grid(self._dense_head(dense_head)(t))  # (B, C, h, w)
        return ModelOutput(self.fc(feat), feat, select_maps(maps, return_feats), aux)

    def _dense_head(self, which: str) -> nn.Module:
        if which == "patch":
            return self.patch_head
        if which == "dist" and self.dist_head is not None:
            return self.dist_head
        raise ValueError(f"dense_head {which!r}: 'patch', or 'dist' for a ViT built with dist_token: true")

    def predict(self, batch) -> Prediction:
        out = self(batch["x"])
        if self.dist_token is None:
            return out.logits
        return {"avg": (out.logits + out.aux["dist"]) / 2, "cls": out.logits, "dist": out.aux["dist"]}


def _check(name: str, image_size: int, patch_size: int, depth: int, dim: int, heads: int) -> None:
    for option, value in (("image_size", image_size), ("patch_size", patch_size), ("depth", depth), ("dim", dim)):
        check_option(name, option, value, isinstance(value, int) and value >= 1, "a positive integer")
    check_option(
        name, "patch_size", patch_size, image_size % patch_size == 0, f"a divisor of image_size ({image_size})"
    )
    check_option(name, "heads", heads, isinstance(heads, int) and heads >= 1 and dim % heads == 0, "a divisor of dim")


@register_model("vit")
def vit(
    num_classes: int,
    image_size: int = 32,
    patch_size: int = 4,
    depth: int = 6,
    dim: int = 192,
    heads: int = 3,
    mlp_dim: int | None = None,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    dist_token: bool = False,
) -> ViT:
    """Any ViT shape (mlp_dim default 4 x dim); the presets below fix depth / dim / heads."""
    _check("vit", image_size, patch_size, depth, dim, heads)
    mlp = 4 * dim if mlp_dim is None else mlp_dim
    return ViT(num_classes, image_size, patch_size, depth, dim, heads, mlp, dropout, attention_dropout, dist_token)


def _preset(name: str, image_size: int, patch_size: int, depth: int, dim: int, heads: int) -> None:
    defaults = (image_size, patch_size)

    def factory(
        num_classes: int,
        image_size: int = defaults[0],
        patch_size: int = defaults[1],
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        dist_token: bool = False,
    ) -> ViT:
        _check(name, image_size, patch_size, depth, dim, heads)
        return ViT(
            num_classes, image_size, patch_size, depth, dim, heads, 4 * dim, dropout, attention_dropout, dist_token
        )

    factory.__doc__ = (
        f"ViT depth {depth}, dim {dim}, {heads} heads, MLP {4 * dim}; {image_size} px, patch {patch_size}."
    )
    register_model(name)(factory)


_preset("vit_cifar_tiny", 32, 4, 6, 192, 3)  # CIFAR: 8x8 patches of 4 px, half DeiT-Ti's depth
_preset("vit_cifar_small", 32, 4, 12, 384, 6)  # CIFAR: DeiT-S's width and depth on 4 px patches
_preset("deit_tiny", 224, 16, 12, 192, 3)  # DeiT-Ti
_preset("deit_small", 224, 16, 12, 384, 6)  # DeiT-S
