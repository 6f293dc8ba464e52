"""The one output contract every model follows, and a base class that enforces it.

Methods that need features (feature KD, contrastive heads, FullMatch's EML on logits) read them from
``ModelOutput`` instead of reaching into a model's modules, so any registered model can be swapped in.

The contract, for every registered model:

* ``model(x, return_feats=False, **inputs) -> ModelOutput``. ``inputs`` are the extra batch fields the model
  declares in ``extra_inputs`` (e.g. ``("meta",)`` for a model that fuses location/date metadata); a stage passes
  them by name (``Stage.forward``), so a model that needs more than the image needs no new stage.
* ``return_feats``: ``True`` for every intermediate map (stem, then each stage), or a sequence of indices
  (negative ones count from the end, as in timm's ``forward_intermediates``) for just those maps.
* ``ModelOutput.aux``: named auxiliary outputs (exits of a multi-exit model, auxiliary heads), empty for a plain
  classifier.
* ``return_dense=True``: ``aux["dense"]`` holds dense per-position logits (B, C, h, w): for a CNN its classifier
  applied at every position of the map it pools (no pooling; their mean over positions is the logits, as the head
  is linear), for a ViT its patch head on every patch token. Spatial distillation (CSKD) reads them.
* ``model.predict(batch)``: what evaluation scores. The logits by default; a model may return several named
  predictions (first = the headline), e.g. each exit of a multi-exit network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NO_AUX: Mapping[str, Tensor] = MappingProxyType({})


class ModelOutput(NamedTuple):
    """``logits`` (B, C); ``feat`` (B, D) the feature the classifier reads; ``feats`` the stem output and each stage
    output (only when requested, else ``None``); ``aux`` named auxiliary outputs (empty unless the model has any)."""

    logits: Tensor
    feat: Tensor
    feats: tuple[Tensor, ...] | None = None
    aux: Mapping[str, Tensor] = NO_AUX


Prediction = Tensor | dict[str, Tensor]


class ClassifierModel(nn.Module):
    """Feature extractor + linear ``fc`` head.

    ``forward_features(x) -> (stage_maps, pooled)`` has a default for stem -> stages models. Keeping the
    classifier in one attribute (``fc``) lets stages re-apply it to mixed or memorised features without a
    second forward. ``fuse(pooled, **inputs)`` is where a model combines the image feature with its extra inputs
    (identity by default); ``forward_aux`` adds auxiliary outputs.
    ``feat_channels`` gives the channel count of each entry of ``feats`` (feature-KD connectors need it).
    """

    num_classes: int
    feat_dim: int
    feat_channels: tuple[int, ...]
    fc: nn.Linear
    extra_inputs: ClassVar[tuple[str, ...]] = ()  # batch fields the forward takes besides the image
    # A *stage-based* model has ``stem`` and ``stages`` and computes the default ``forward_features`` (stem ->
    # stages -> pre_pool -> global pool). It names the attributes its ``pre_pool`` reads, so that a multi-exit model
    # can build fresh copies of its later stages and of that head (``ssl_kd.models.multi_exit``).
    pre_pool_modules: ClassVar[tuple[str, ...]] = ()

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The common shape (``stem`` then ``stages``): every stage output is a feature map, pooled after
        ``pre_pool``. Models of another shape override this (or ``forward_map``)."""
        maps, last = self.forward_map(x)
        return maps, global_pool(last)

    def forward_map(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(stage maps, the map global pooling reads). Dense logits apply ``fc`` at every position of the latter;
        a model whose pooled feature is not the average of one map (an MLP) has no dense logits."""
        out = self.stem(x)
        maps = [out]
        for stage in self.stages:
            out = stage(out)
            maps.append(out)
        return maps, self.pre_pool(out)

    def pre_pool(self, x: Tensor) -> Tensor:
        return x

    def fuse(self, feat: Tensor, **inputs: Tensor) -> Tensor:
        """The pooled feature combined with the extra inputs: a carried head (``fusion``, e.g. DynamicMLP attached
        by ``create_model(..., head=...)``) when there is one, else the feature unchanged."""
        fusion = self._modules.get("fusion")
        return feat if fusion is None else fusion(feat, **inputs)

    def forward_aux(self, maps: list[Tensor], feat: Tensor, **inputs: Tensor) -> Mapping[str, Tensor]:
        return NO_AUX

    def forward(
        self, x: Tensor, return_feats: bool | Sequence[int] = False, return_dense: bool = False, **inputs: Tensor
    ) -> ModelOutput:
        if inputs.keys() != set(self.extra_inputs):
            self._bad_inputs(inputs)
        if not return_dense:
            maps, feat = self.forward_features(x)
            feat = self.fuse(feat, **inputs)
            logits = self.fc(feat)
            return ModelOutput(logits, feat, select_maps(maps, return_feats), self.forward_aux(maps, feat, **inputs))
        self._check_dense()
        maps, last = self.forward_map(x)
        feat = global_pool(last)
        logits = self.fc(feat)
        aux = {**self.forward_aux(maps, feat), "dense": dense_logits(last, self.fc)}
        return ModelOutput(logits, feat, select_maps(maps, return_feats), aux)

    def _check_dense(self) -> None:
        cls = type(self)
        if self.extra_inputs or (
            cls.forward_features is not ClassifierModel.forward_features
            and cls.forward_map is ClassifierModel.forward_map
        ):
            raise TypeError(
                f"{cls.__name__} has no dense logits: its classifier does not read the average of one feature map "
                f"alone (it needs a spatial forward_map and no extra inputs)"
            )

    def inputs_from(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The extra inputs this model declares, taken from a batch by name."""
        missing = [k for k in self.extra_inputs if k not in batch]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs the batch field(s) {missing} (it declares extra_inputs="
                f"{self.extra_inputs}); the batch has {sorted(batch)}"
            )
        return {k: batch[k] for k in self.extra_inputs}

    def predict(self, batch: Mapping[str, Any]) -> Prediction:
        """What evaluation scores for this batch: logits (B, C), or named logits with the headline first."""
        return self(batch["x"], **self.inputs_from(batch)).logits

    def _bad_inputs(self, inputs: Mapping[str, Tensor]) -> None:
        given, declared = set(inputs), set(self.extra_inputs)
        raise TypeError(
            f"{type(self).__name__}.forward: extra inputs {sorted(given - declared)} are not declared "
            f"(extra_inputs={self.extra_inputs})"
            if given - declared
            else f"{type(self).__name__}.forward: missing extra inputs {sorted(declared - given)}"
        )


def is_stage_based(model: nn.Module) -> bool:
    """Whether ``model`` follows the stem -> stages -> pre_pool shape that multi-exit models are built from."""
    return isinstance(model, ClassifierModel) and hasattr(model, "stem") and hasattr(model, "stages")


def select_maps(maps: list[Tensor], which: bool | Sequence[int]) -> tuple[Tensor, ...] | None:
    """All maps (True), none (False), or the maps at the given indices in the given order."""
    if which is True:
        return tuple(maps)
    if which is False or which is None:
        return None
    n = len(maps)
    bad = [i for i in which if not -n <= i < n]
    if bad:
        raise IndexError(f"feature indices {bad} out of range for {n} feature maps (valid: {-n}..{n - 1})")
    return tuple(maps[i] for i in which)


def dense_logits(fmap: Tensor, fc: nn.Linear) -> Tensor:
    """A linear classifier at every position of a (B, D, h, w) map: (B, C, h, w), a 1x1 convolution with its weights.
    Averaged over positions it equals ``fc(global_pool(fmap))`` (the head is linear)."""
    return F.conv2d(fmap, fc.weight[:, :, None, None], fc.bias)


def global_pool(x: Tensor) -> Tensor:
    """Adaptive average pool to 1x1 and flatten, so any input size >= 8px works (the reference repos hard-code
    ``AvgPool2d(8)``, which silently assumes 32px inputs)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def kaiming_conv_bn_init(module: nn.Module) -> None:
    """torchvision's (and the KD repos' CIFAR ResNets') conv / BN init: kaiming normal fan_out for ReLU, BN 1 / 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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
