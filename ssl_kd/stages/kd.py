"""Teacher-student distillation (Hinton KD): w_ce * CE(s, y) + w_kd * tau^2 KL(teacher || student).

Defaults are mdistiller's CIFAR-100 recipe: tau = 4, w_ce = 0.1, w_kd = 0.9. The teacher is a `uses` model:
frozen, in eval mode, run under no_grad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_kd.config.schema import StageConfig
from ssl_kd.engine import Stage, register_stage
from ssl_kd.losses import accuracy, kd_loss
from ssl_kd.stages._common import Augment, Subset, labelled_views


class KDConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 0.1, "kd": 0.9})
    temperature: float = Field(4.0, gt=0)
    augment: Augment = "weak"
    subset: Subset = "all"


@register_stage("kd")
class KD(Stage):
    Config = KDConfig
    cfg: KDConfig

    def setup(self) -> None:
        self.student = self.single("train")
        self.teacher = self.single("uses")
        self.add_stream("train", labelled_views(self, self.cfg.augment, self.cfg.subset))

    def train_step(self, batch):
        x, y = batch["train"]["x"], batch["train"]["y"]
        with torch.no_grad():
            t_logits = self.model(self.teacher)(x).logits
        s_logits = self.model(self.student)(x).logits
        return {
            "ce": F.cross_entropy(s_logits, y),
            "kd": kd_loss(s_logits, t_logits, self.cfg.temperature),
            "acc": accuracy(s_logits, y),
        }
