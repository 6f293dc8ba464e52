"""CSKD: Cumulative Spatial Knowledge Distillation from a CNN teacher into a ViT student (Zhao, Song, Liang,
ICCV 2023, arXiv 2307.08500).

    t, T_dense = teacher(x)                 pooled logits (B, C) and the classifier at every position (B, C, h, w)
    z_cls, z_dist, S_dense = student(x)     class token, optional distillation token, patch head (B, C, hs, ws)
    beta_t = schedule(progress)             Cumulative Knowledge Fusion weight, 0 -> 1 over the stage (linear)
    q_i = (1 - beta_t) softmax(T_i / tau) + beta_t softmax(t / tau)             per position, on one grid
    L = w_ce CE(z_cls, y) + w_kd KD(z_tok, t) + w_patch mean_i l(S_i, q_i)      z_tok = z_cls or z_dist

Written from the paper's abstract before the authors' code (Zzzzz1/CSKD@fa0d8b8, cskd/cskd.py) was found: every
concrete form is a reading of the paper and marked [unverified] at its option, default first; configs/kd/README.md
says where the authors' code differs. With `loss_weights.patch: 0` (no dense forward) and `token: dist` the stage is
the DeiT-style distillation baseline for the same pair.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_kd.components import ScheduleConfig
from ssl_kd.config.schema import StageConfig
from ssl_kd.engine import Plot, register_stage
from ssl_kd.errors import UserError
from ssl_kd.losses import accuracy, kd_loss
from ssl_kd.losses.cskd import align_dense, ckf_target, patch_distill_loss
from ssl_kd.stages._common import Augment
from ssl_kd.stages._teacher_student import TeacherStudent


def _beta_default() -> ScheduleConfig:
    return ScheduleConfig(shape="linear", start=0.0, end=1.0, unit="step")


class CSKDConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "kd": 1.0, "patch": 1.0})  # [unverified]
    temperature: float = Field(1.0, gt=0)  # tau of the soft token KD and of the CKF target [unverified]
    token: Literal["cls", "dist"] = "cls"  # token that learns the teacher's global logits; dist = DeiT's [unverified]
    token_kd: Literal["soft", "hard"] = "soft"  # tau^2 KL, or CE on the teacher's argmax (DeiT hard) [unverified]
    patch_kd: Literal["soft_ce", "kl", "hard"] = "soft_ce"  # per-patch loss against q_i [unverified]
    beta: ScheduleConfig = Field(default_factory=_beta_default)  # CKF weight: linear 0 -> 1 per step [unverified]
    align: Literal["pool_student", "resize_teacher"] = "pool_student"  # when the grids differ [unverified]
    resize_mode: Literal["bilinear", "nearest"] = "bilinear"  # align: resize_teacher only
    augment: Augment = "weak"


@register_stage("cskd")
class CSKD(TeacherStudent):
    Config = CSKDConfig
    cfg: CSKDConfig
    plots = (Plot("ckf", {"beta": "beta_t"}, "CKF fusion weight", "beta"),)

    def setup(self) -> None:
        c = self.cfg
        self.setup_pair()
        if c.token == "dist" and getattr(self.raw_model(self.student), "dist_token", None) is None:
            raise UserError(
                f"stages.{self.name}.token: 'dist' needs a student with a distillation token; set "
                f"models.{self.student}.kwargs.dist_token: true (a ViT), or token: cls"
            )
        self.dense = c.loss_weights.get("patch", 0.0) != 0
        self.beta = self.schedule(c.beta)

    def train_step(self, batch):
        c = self.cfg
        x, y = batch["train"]["x"], batch["train"]["y"]
        out = self.model(self.student)(x, return_dense=self.dense)
        t_out = self.teacher.output(x, return_dense=self.dense)  # eval mode, no_grad
        t = t_out.logits
        z = out.aux["dist"] if c.token == "dist" else out.logits
        kd = kd_loss(z, t, c.temperature) if c.token_kd == "soft" else F.cross_entropy(z, t.argmax(dim=1))
        losses = {"ce": F.cross_entropy(out.logits, y), "kd": kd}
        beta = self.beta.value
        if self.dense:
            s_dense, t_dense = align_dense(out.aux["dense"], t_out.aux["dense"], c.align, c.resize_mode)
            q = ckf_target(t_dense, t, beta, c.temperature)
            losses["patch"] = patch_distill_loss(s_dense, q, c.temperature, c.patch_kd)
        return losses, {"acc": accuracy(out.logits, y), "beta": torch.tensor(beta, device=x.device)}
