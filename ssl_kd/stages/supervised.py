"""Supervised training: cross-entropy with optional label smoothing and a batch-level mix.

    mix (optional) = one of mixup | cutmix drawn per batch (`mix:` block; ssl_kd.data.mixing), applied with the same
                     lambda and partner to the images, the one-hot labels and the model's extra inputs (metadata)
    L = CE(f(x'), y')      soft-target CE on mixed batches, CE with label smoothing otherwise

Label smoothing eps has two conventions (`label_smoothing_convention`, ssl_kd.losses.smooth_targets):
`uniform` (default) puts eps / C on every class, 1 - eps + eps / C on the target (``F.cross_entropy``);
`off_target` puts eps / (C - 1) off the target and 1 - eps on it (ylingfeng/DynamicMLP@773197c5 utils.py
LabelSmoothingLoss). On a mixed batch the mixed one-hot is smoothed by the same convention: the soft CE then equals
lam CE(z, t(y_a)) + (1 - lam) CE(z, t(y_b)), what DynamicMLP's train.py computes under mixup.

`mix: {kind: mixup, alpha: 0.4}` and `mix: {kind: cutmix, alpha: 1.0}` are the Mixup / CutMix baselines of the
self-distillation papers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_kd.config.schema import StageConfig
from ssl_kd.data import MixConfig, one_hot
from ssl_kd.engine import Stage, register_stage
from ssl_kd.losses import SmoothingConvention, accuracy, smooth_targets, soft_cross_entropy
from ssl_kd.stages._common import Augment, Subset, labelled_views, mix_batch


class SupervisedConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0})
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # uniform: eps / C everywhere (F.cross_entropy); off_target: eps / (C - 1) off the target, 1 - eps on it
    label_smoothing_convention: SmoothingConvention = "uniform"
    mix: MixConfig = Field(default_factory=MixConfig)
    augment: Augment = "weak"
    subset: Subset = "all"  # "labeled": only data.ssl's labelled subset (the SSL supervised baseline)

    @classmethod
    def migrate(cls, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The older `mixup_alpha` / `cutmix_alpha` / `mix_prob` keys are gone: one clear error pointing to `mix:`."""
        data, notes = super().migrate(data)
        old = [k for k in ("mixup_alpha", "cutmix_alpha", "mix_prob") if k in data]
        if old:
            raise ValueError(
                f"{', '.join(old)}: these keys were replaced by the `mix:` block; write e.g. "
                f"`mix: {{kind: mixup, alpha: 0.4}}` or `mix: {{kind: cutmix, alpha: 1.0, prob: 0.5}}`"
            )
        return data, notes


@register_stage("supervised")
class Supervised(Stage):
    Config = SupervisedConfig
    cfg: SupervisedConfig

    def setup(self) -> None:
        self.net = self.single("train")
        self.add_stream("train", labelled_views(self, self.cfg.augment, self.cfg.subset))

    def train_step(self, batch):
        part = batch["train"]
        if self.cfg.mix.kind != "none":
            return self._mixed_step(part)
        logits = self.forward(self.net, part).logits
        return {"ce": self._ce(logits, part["y"])}, {"acc": accuracy(logits, part["y"])}

    def _ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE with label smoothing on hard labels (uniform: ``F.cross_entropy``'s own smoothing)."""
        c = self.cfg
        if c.label_smoothing_convention == "uniform" or not c.label_smoothing:
            return F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
        return soft_cross_entropy(logits, self._smooth(one_hot(y, self.data.num_classes)))

    def _mixed_step(self, part):
        """The `mix:` form: images, one-hot labels and the model's extra inputs mixed by one drawn mix."""
        c = self.cfg
        x, y = part["x"], part["y"]
        extra = self.inputs(self.net, part)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mixed, params = mix_batch(c.mix, x, y, self.data.num_classes, extra, dtype)
        if mixed is None:
            logits = self.forward(self.net, part).logits
            return {"ce": self._ce(logits, y)}, self._diag(logits, y, 1.0)
        logits = self.forward(self.net, part, mixed["x"], **{k: mixed[k] for k in extra}).logits
        return {"ce": soft_cross_entropy(logits, self._smooth(mixed["y"]))}, self._diag(logits, y, params.lam)

    def _smooth(self, soft: torch.Tensor) -> torch.Tensor:
        return smooth_targets(soft, self.cfg.label_smoothing, self.cfg.label_smoothing_convention)

    @staticmethod
    def _diag(logits: torch.Tensor, y: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
        return {"acc": accuracy(logits, y), "lam": torch.full((), float(lam), device=logits.device)}
