"""Supervised training: cross-entropy with optional label smoothing and batch-level mixup / cutmix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_kd.config.schema import StageConfig
from ssl_kd.data import cutmix, mixup
from ssl_kd.engine import Stage, register_stage
from ssl_kd.losses import accuracy, soft_cross_entropy
from ssl_kd.stages._common import Augment, Subset, labelled_views


class SupervisedConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0})
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    mix_prob: float = Field(1.0, ge=0, le=1)  # chance a batch is mixed (one of mixup/cutmix, 50/50 when both on)
    augment: Augment = "weak"
    subset: Subset = "all"  # "labeled": only data.ssl's labelled subset (the SSL supervised baseline)


@register_stage("supervised")
class Supervised(Stage):
    Config = SupervisedConfig
    cfg: SupervisedConfig

    def setup(self) -> None:
        self.net = self.single("train")
        self.add_stream("train", labelled_views(self, self.cfg.augment, self.cfg.subset))

    def train_step(self, batch):
        x, y = batch["train"]["x"], batch["train"]["y"]
        c = self.cfg
        mix = None
        if (c.mixup_alpha or c.cutmix_alpha) and torch.rand(()).item() < c.mix_prob:
            use_cutmix = c.cutmix_alpha > 0 and (c.mixup_alpha == 0 or torch.rand(()).item() < 0.5)
            mix = (cutmix, c.cutmix_alpha) if use_cutmix else (mixup, c.mixup_alpha)
        part = batch["train"]
        if mix is None:
            logits = self.forward(self.net, part).logits
            ce = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
        else:
            fn, alpha = mix
            x, soft = fn(x, y, alpha, self.data.num_classes)
            if c.label_smoothing:
                soft = soft * (1 - c.label_smoothing) + c.label_smoothing / self.data.num_classes
            logits = self.forward(self.net, part, x).logits
            ce = soft_cross_entropy(logits, soft)
        return {"ce": ce}, {"acc": accuracy(logits, y)}
