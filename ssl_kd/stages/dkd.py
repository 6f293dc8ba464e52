"""DKD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022; megvii-research/mdistiller@a08d46f
mdistiller/distillers/DKD.py): KD split into its target-class and non-target-class parts, weighted apart.

    b   = [p_t, 1 - p_t]  of student and teacher at tau              TCKD = tau^2 KL(b_T || b_S)
    p^  = softmax over the non-target classes at tau                 NCKD = tau^2 KL(p^_T || p^_S)
    L   = w_ce CE(z_s, y) + w_kd min(epoch / warmup_epochs, 1) (alpha TCKD + beta NCKD)

Defaults are mdistiller's CIFAR-100 recipe: w_ce 1, w_kd 1, alpha 1, beta 8 (6 for wrn_40_2 / vgg13 teachers, 2 for
resnet56 / resnet110: mdistiller configs/cifar100/dkd/*.yaml), tau 4, warm-up over 20 epochs counted from 1. The
CTKD repository's DKD (zhengli97/CTKD@7d52522 distiller_zoo/DKD.py) has no warm-up: `warmup_epochs: 0`. Where no
label is read (unlabelled images, DM-KD) the target class is the teacher's argmax. Everything else (temperature
policy, KA, mix, unlabelled stream, cached teacher) is `LogitDistillation`'s, as for `type: kd`.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ssl_kd.components import ramp
from ssl_kd.engine import register_stage
from ssl_kd.losses import dkd_loss
from ssl_kd.stages._teacher_student import LogitDistillation, LogitDistillationConfig


class DKDConfig(LogitDistillationConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "kd": 1.0})
    alpha: float = Field(1.0, ge=0)  # TCKD weight
    beta: float = Field(8.0, ge=0)  # NCKD weight
    warmup_epochs: int = Field(20, ge=0)  # DKD term x min(epoch / warmup, 1), 1-based epochs; 0 = no warm-up

    @classmethod
    def migrate(cls, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The options were a `dkd:` block of the kd stage (`type: kd, loss: dkd, dkd: {...}`)."""
        data, notes = super().migrate(data)
        if isinstance(data.get("dkd"), dict):  # anything else: the schema reports `dkd` as an unknown key
            block = data.pop("dkd")
            clash = sorted(set(block) & set(data))
            if clash:
                raise ValueError(f"{clash} given both in `dkd:` and at the stage's top level; keep the top level")
            data.update(block)
            notes.append(
                f"the `dkd:` block is now the stage's own keys: {', '.join(f'{k}: {v}' for k, v in block.items())}"
            )
        return data, notes


@register_stage("dkd")
class DKD(LogitDistillation):
    Config = DKDConfig
    cfg: DKDConfig

    def setup(self) -> None:
        super().setup()
        self.warmup = self.schedule(ramp("linear", 0.0, 1.0, self.cfg.warmup_epochs, unit="epoch", one_based=True))

    def distill(self, student, teacher, target, tau) -> torch.Tensor:
        c = self.cfg
        return self.warmup.value * dkd_loss(
            student, teacher, target, c.alpha, c.beta, tau, self.temperature.tau_squared
        )
