"""CSKD: Cumulative Spatial Knowledge Distillation from a CNN teacher into a ViT student (Zhao, Song, Liang,
ICCV 2023, arXiv 2307.08500). The defaults follow the authors' code, Zzzzz1/CSKD@fa0d8b8 (`cskd/cskd.py`
`CSKDLoss`, `cskd/models/vision_transformer.py`, `configs/cskd_{tiny,small,base}.py`):

    t, T_dense = teacher(x)                 pooled logits (B, C) and the classifier at every position (B, C, h, w)
    z_cls, z_dist, S_dense = student(x)     class token, distillation token, the distillation head on every patch
    beta_e = e / E                          CKF weight per 0-based epoch e of E (the code's 1 - linear decay)
    z_i = (1 - beta_e) T_i + beta_e t       fused logits per position, on one grid (student pooled to the teacher's)
    L = 0.5 CE(z_cls, y) + 0.5 CE(z_dist, argmax t) + 1.0 mean_i CE(S_i, argmax z_i)
    prediction = (z_cls + z_dist + mean_i S_i) / 3

i.e. (1 - alpha) base + alpha L_deit + w L_cskd with alpha = 0.5 and w = 1. Each of our earlier readings of the
paper is an option: `fusion: probs`, `patch_kd: soft_ce` with `patch_reduction: mean`, `token: cls`, `token_kd: soft`
with `token_reduction`, `patch_head: separate`, `predict: model`, a per-step `beta`. With `loss_weights.patch: 0`
(no dense forward; `predict` then defaults to the model's own (z_cls + z_dist) / 2) the stage is the DeiT
distillation baseline for the same pair. The official code's `x2` / `cos` decays are not offered (its default is
linear); its base loss carries the recipe's label smoothing and Mixup, which this stage does not apply.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ssl_kd.components import ScheduleConfig
from ssl_kd.config.schema import StageConfig
from ssl_kd.engine import Plot, register_stage
from ssl_kd.errors import UserError
from ssl_kd.losses import accuracy
from ssl_kd.losses.cskd import PatchKind, PatchReduction, cskd_terms
from ssl_kd.models.base import ModelOutput, Prediction
from ssl_kd.stages._common import Augment
from ssl_kd.stages._teacher_student import TeacherStudent

_TERM_OPTIONS = {
    "temperature", "token_kd", "token_reduction", "patch_kd", "patch_reduction", "fusion", "align", "resize_mode"
}  # fmt: skip


def _beta_default() -> ScheduleConfig:
    return ScheduleConfig(shape="linear", start=0.0, end=1.0, unit="epoch")


class CSKDConfig(StageConfig):
    # (1 - alpha) CE + alpha token KD + w patch, alpha = deit_alpha 0.5, w = cksd_loss_weight 1
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 0.5, "kd": 0.5, "patch": 1.0})
    temperature: float = Field(1.0, gt=0)  # deit_tau: the soft token KD's and the soft patch loss's tau
    token: Literal["dist", "cls"] = "dist"  # token that learns the teacher's global logits
    token_kd: Literal["hard", "soft"] = "hard"  # CE on the teacher's argmax (DeiT hard), or tau^2 KL
    token_reduction: Literal["elements", "batch"] = "elements"  # soft: KL summed / (B * C) (the code), or / B
    patch_kd: PatchKind = "hard"  # per-patch loss against the fused target; kl = the code's `soft`
    patch_reduction: PatchReduction = "official"  # hard: position mean; kl / soft_ce: sum over positions / B
    fusion: Literal["logits", "probs"] = "logits"  # CKF fuses the teacher's logits (the code) or probabilities
    patch_head: Literal["dist", "separate"] = "dist"  # the distillation head on the patch tokens, or the ViT's own
    predict: Literal["official", "model"] = "official"  # (cls + dist + dense mean) / 3, or the model's predict
    beta: ScheduleConfig = Field(default_factory=_beta_default)  # CKF weight: linear 0 -> 1 per 0-based epoch
    align: Literal["pool_student", "resize_teacher"] = "pool_student"  # when the grids differ
    resize_mode: Literal["bilinear", "nearest"] = "bilinear"  # align: resize_teacher only
    augment: Augment = "weak"

    @classmethod
    def derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Without the patch term (the DeiT baseline) the test-time prediction is the model's own."""
        weights = data.get("loss_weights")
        if isinstance(weights, dict) and weights.get("patch", 1.0) == 0:
            return {"predict": "model"}
        return {}


def official_prediction(out: ModelOutput) -> dict[str, torch.Tensor]:
    """CSKD's test-time rule, (cls + dist + mean over positions of the dense logits) / 3, first; then DeiT's
    (cls + dist) / 2, and each output alone (``out`` from a forward with ``return_dense=True``)."""
    cls, dist, dense = out.logits, out.aux["dist"], out.aux["dense"].mean(dim=(2, 3))
    return {"avg3": (cls + dist + dense) / 3, "avg": (cls + dist) / 2, "cls": cls, "dist": dist, "dense": dense}


@register_stage("cskd")
class CSKD(TeacherStudent):
    Config = CSKDConfig
    cfg: CSKDConfig
    plots = (Plot("ckf", {"beta": "beta_t"}, "CKF fusion weight", "beta"),)

    def setup(self) -> None:
        c = self.cfg
        self.setup_pair()
        self.dense = c.loss_weights.get("patch", 0.0) != 0
        has_dist = getattr(self.raw_model(self.student), "dist_token", None) is not None
        needs = [
            (f"token: {c.token}", c.token == "dist", "token: cls"),
            (f"patch_head: {c.patch_head}", self.dense and c.patch_head == "dist", "patch_head: separate"),
            (f"predict: {c.predict}", c.predict == "official", "predict: model"),
        ]
        for key, needed, other in needs:
            if needed and not has_dist:
                raise UserError(
                    f"stages.{self.name}.{key} needs a student with a distillation token (the official CSKD); set "
                    f"models.{self.student}.kwargs.dist_token: true (a ViT), or {other}"
                )
        self.dense_kwargs = {"return_dense": True}
        self.term_opts = c.model_dump(include=_TERM_OPTIONS)  # the loss's options, read once (not per step)
        if c.patch_head == "dist":
            self.dense_kwargs["dense_head"] = "dist"
        self.beta = self.schedule(c.beta)

    def train_step(self, batch):
        c = self.cfg
        x, y = batch["train"]["x"], batch["train"]["y"]
        out = self.model(self.student)(x, **(self.dense_kwargs if self.dense else {}))
        t_out = self.teacher.output(x, return_dense=self.dense)  # eval mode, no_grad
        dense = (out.aux["dense"], t_out.aux["dense"]) if self.dense else (None, None)
        beta = self.beta.value if self.dense else 0.0
        token = out.aux["dist"] if c.token == "dist" else out.logits
        # the teacher's logits = the mean of its dense logits (a linear head): the code's global logits
        losses = cskd_terms(out.logits, token, y, t_out.logits, *dense, beta, **self.term_opts)
        logs = {"acc": accuracy(out.logits, y)}
        if self.dense:
            logs["beta"] = torch.full((), beta, device=x.device)  # a fill, not a copy from the host
        return losses, logs  # beta only with the patch term: it weighs nothing else

    def predict(self, name: str, model: torch.nn.Module, batch) -> Prediction:
        """`predict: official`: the student scores (cls + dist + mean of the dense logits) / 3 as the headline
        (Zzzzz1/CSKD@fa0d8b8 `VisionTransformer.forward` in eval mode), then DeiT's (cls + dist) / 2 and each alone."""
        if name != self.student or self.cfg.predict == "model":
            return super().predict(name, model, batch)
        return official_prediction(model(batch["x"], **self.dense_kwargs))
