"""PAD: Prime-Aware Adaptive Distillation (Zhang et al., ECCV 2020), in torchdistill's two-phase chain
(configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/{ce_l2,pad_l2}-resnet18_from_resnet34.yaml).

    f_t = teacher(x).feat                      pooled feature, frozen teacher (eval mode, no grad)
    z_s, f = student(x);  f_s = C(f)           C: connector to the teacher's width (identity when they match)
    phase 1, uncertainty: false                L = CE(z_s, y) + 15 mean (f_t - f_s)^2            (`ce_l2`)
    phase 2, uncertainty: true                 s = V(f_s), V = Linear(d, d) + BatchNorm1d (registered)
                                               L = CE(z_s, y) + 1 mean[(f_t - f_s)^2 / (eps + e^s) + s]   (`pad_l2`)

Phase 2 starts from phase 1's student (and connector: `init.modules: [connector]`) with a fresh variance branch, at
a low LR (torchdistill: 30 epochs, SGD lr 0.002, wd 1e-4). The variance branch reads the compared student feature
(after the connector; torchdistill's pairs need none, so there it is the student's avgpool output), and the PAD
term's gradient reaches the student through both f_s and s, as in torchdistill. The weights (ce 1 and l2 15 in
phase 1, ce 1 and pad 1 in phase 2) and the `mean` reduction are the official configs'; eps = 1e-6 is theirs too.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from pydantic import Field, model_validator

from ssl_kd.config.schema import StageConfig
from ssl_kd.engine import register_stage
from ssl_kd.errors import UserError
from ssl_kd.losses import PAD_EPS, accuracy, feature_l2_loss, pad_l2_loss
from ssl_kd.models.feature_heads import VarianceHead, connector_for
from ssl_kd.stages._common import Augment, feat_dim
from ssl_kd.stages._teacher_student import TeacherStudent


class PADConfig(StageConfig):
    # phase 1 (`uncertainty: false`) uses ce + l2, phase 2 ce + pad: the defaults follow `uncertainty` (see below)
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "l2": 15.0, "pad": 1.0})
    uncertainty: bool = False  # false: CE + plain L2 (phase 1); true: CE + PAD-L2 with the variance branch
    eps: float = Field(PAD_EPS, gt=0)
    reduction: Literal["mean", "sum"] = "mean"  # over the batch, of the PAD term's per-sample means
    connector: Literal["auto", "identity", "linear"] = "auto"  # auto: identity for equal widths, else linear
    augment: Augment = "weak"

    @classmethod
    def derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The unused term of the phase gets weight 0 unless the YAML weights it (torchdistill's pad_l2 config
        has no plain L2 term; its ce_l2 config no PAD term)."""
        return {"loss_weights": {"l2" if data.get("uncertainty") else "pad": 0.0}}

    @model_validator(mode="after")
    def _pad_needs_the_branch(self) -> PADConfig:
        if not self.uncertainty:
            if self.loss_weights["pad"]:
                raise ValueError("loss_weights.pad: the PAD term needs the variance branch; set uncertainty: true")
            del self.loss_weights["pad"]  # nothing to compute or log without the branch
        return self


@register_stage("pad")
class PAD(TeacherStudent):
    Config = PADConfig
    cfg: PADConfig

    def setup(self) -> None:
        c = self.cfg
        self.setup_pair()
        teacher = self.teacher_name
        d_t = feat_dim(self, teacher)
        feat_dim(self, self.student)  # both pooled widths declared (the connector reads them)
        student_net, teacher_net = self.raw_model(self.student), self.raw_model(teacher)
        try:  # the pooled features: identity for equal widths, else linear
            connector = connector_for(c.connector, student_net, teacher_net, None, self.seed("connector"))
        except ValueError as e:
            raise UserError(f"stages.{self.name}.connector: {e}; use auto or linear.") from None
        self.register_module("connector", connector)
        if c.uncertainty:
            self.register_module("variance", VarianceHead(d_t, seed=self.seed("variance")))

    def train_step(self, batch):
        c = self.cfg
        part = batch["train"]
        x, y = part["x"], part["y"]
        out = self.forward(self.student, part)
        f_t = self.teacher.output(x).feat.flatten(1)  # eval mode, no_grad
        f_s = self.module("connector")(out.feat.flatten(1))
        losses = {"ce": F.cross_entropy(out.logits, y)}
        losses["l2"] = feature_l2_loss(f_s, f_t)  # phase 2: weight 0, logged (how far the features still are)
        diagnostics = {"acc": accuracy(out.logits, y)}
        if c.uncertainty:
            log_var = self.module("variance")(f_s)
            losses["pad"] = pad_l2_loss(f_s, f_t, log_var, c.eps, c.reduction)
            diagnostics["log_var"] = log_var.detach().mean()
        return losses, diagnostics
