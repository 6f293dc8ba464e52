"""Teacher-student logit distillation: the KD family of kd_and_frameworks.md Part A as one configurable step.

    z_t = teacher(x) (frozen, eval mode, no_grad; optionally cached)     z_s = student(x)
    tau = temperature policy(z_s, z_t)     fixed | ctkd_global | ctkd_instance | dtd
    z_t = KA(z_t, y, tau)                  optional: correct the target where the teacher is wrong (lsr | ps)
    L   = w_ce * CE(z_s, y) + w_kd * { tau^2 KL(z_t || z_s)                        loss: kd
                                     { min(epoch / warmup, 1) * (alpha TCKD + beta NCKD)   loss: dkd

Defaults are mdistiller's CIFAR-100 recipe (KD: tau 4, w_ce 0.1, w_kd 0.9; DKD: w_ce 1, w_kd 1, alpha 1, beta 8,
warm-up 20 epochs). DOT is not a stage option but an optimizer (`optimizer.name: dot`) that backpropagates the
`kd` and `ce` terms separately through the runner's loss groups. With `unlabeled: true` the KD term also covers
a stream of unlabelled images (CE stays on the labelled batch).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ssl_kd.config.schema import StageConfig, Strict
from ssl_kd.engine import Stage, register_stage
from ssl_kd.errors import UserError
from ssl_kd.losses import (
    GlobalTemperature,
    InstanceTemperature,
    accuracy,
    ctkd_lambda,
    dkd_loss,
    dtd_temperature,
    kd_loss,
    knowledge_adjust,
)
from ssl_kd.memory import TeacherLogitCache
from ssl_kd.stages._common import Augment, Subset, labelled_views, unlabelled_pool


class DKDOptions(Strict):
    """DKD (§A2). Per-pair beta in mdistiller: 8 by default, 6 for wrn_40_2 / vgg13 teachers, 2 for resnet56/110."""

    alpha: float = Field(1.0, ge=0)  # TCKD weight
    beta: float = Field(8.0, ge=0)  # NCKD weight
    warmup_epochs: int = Field(20, ge=0)  # DKD term x min(epoch / warmup, 1), 1-based epochs; 0 = no warm-up


class CTKDOptions(Strict):
    """CTKD (§A4): tau = t_start + t_range * sigmoid(theta), theta trained adversarially through a GRL."""

    t_start: float = Field(1.0, gt=0)
    t_range: float = Field(20.0, gt=0)  # CTKD's `t_end`
    init: float = 1.0  # theta_0 (global) / the MLP's output bias (instance): tau_0 = 1 + 20 sigmoid(1) ~ 15.6
    lambda_max: float = Field(1.0, ge=0)  # GRL strength after the ramp
    ramp_epochs: int = Field(10, ge=0)  # cosine ramp of lambda from 0 to lambda_max (CTKD: 10)
    hidden: int = Field(256, ge=1)  # ctkd_instance: MLP width


class DTDOptions(Strict):
    """DTD (§A7): tau_x = temperature + beta * (mean_batch(w) - w_x); FLSW or CWSM weights, no gradient."""

    weights: Literal["flsw", "cwsm"] = "flsw"
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(2.0, gt=0)  # FLSW exponent
    min_temperature: float = Field(0.1, gt=0)  # floor (ours): keeps tau positive for any beta


class KAOptions(Strict):
    """Knowledge adjustment (§A7) on samples the teacher gets wrong: label smoothing or probability shift."""

    mode: Literal["none", "lsr", "ps"] = "none"
    correct_prob: float = Field(0.9, gt=0, lt=1)  # lsr: probability given to the true class


class KDConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 0.1, "kd": 0.9})
    loss: Literal["kd", "dkd"] = "kd"
    temperature: float = Field(4.0, gt=0)  # fixed tau; DTD's base T0
    temperature_policy: Literal["fixed", "ctkd_global", "ctkd_instance", "dtd"] = "fixed"
    dkd: DKDOptions = Field(default_factory=DKDOptions)
    ctkd: CTKDOptions = Field(default_factory=CTKDOptions)
    dtd: DTDOptions = Field(default_factory=DTDOptions)
    ka: KAOptions = Field(default_factory=KAOptions)
    unlabeled: bool = False  # KD also on data.ssl's unlabelled images (needs data.ssl.num_labels)
    unlabeled_batch_size: int | None = Field(None, ge=1)  # default: batch_size
    augment: Augment = "weak"
    subset: Subset = "all"  # with unlabeled: true always "labeled"
    cache_teacher: bool = False  # keep each image's teacher logits after the first epoch (needs augment: none)

    @model_validator(mode="before")
    @classmethod
    def _dkd_weights(cls, data: Any) -> Any:
        """With `loss: dkd` the loss weights default to mdistiller's DKD ones (ce 1, kd 1), term by term."""
        if isinstance(data, dict) and data.get("loss") == "dkd":
            given = data.get("loss_weights")
            data = {**data, "loss_weights": {"ce": 1.0, "kd": 1.0, **(given if isinstance(given, dict) else {})}}
        return data

    @field_validator("cache_teacher")
    @classmethod
    def _cache_needs_fixed_inputs(cls, value: bool, info: ValidationInfo) -> bool:
        augment = info.data.get("augment")
        if value and augment != "none":
            raise ValueError(
                f"teacher logits can only be cached when the teacher sees the same image every epoch, but augment "
                f"is '{augment}' (a new random view each time); set augment: none to cache"
            )
        return value

    @field_validator("subset")
    @classmethod
    def _labelled_when_unlabeled(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("unlabeled") and value != "labeled":
            raise ValueError("with unlabeled: true the CE batch is data.ssl's labelled subset; set subset: labeled")
        return value

    @model_validator(mode="after")
    def _unlabeled_subset(self) -> KDConfig:
        if self.unlabeled:
            self.subset = "labeled"  # the default "all" would put every image in the CE batch
        return self


@register_stage("kd")
class KD(Stage):
    Config = KDConfig
    cfg: KDConfig

    def setup(self) -> None:
        from ssl_kd.data import ViewDataset

        c = self.cfg
        self.student = self.single("train")
        self.teacher = self.single("uses")
        classes = {n: getattr(self.runner.models[n], "num_classes", None) for n in (self.student, self.teacher)}
        if len(set(classes.values())) > 1:
            raise UserError(
                f"stages.{self.name}: the student and teacher must have the same number of classes to be "
                f"distilled, got {classes}; check models.<name>.num_classes."
            )
        self.add_stream("train", labelled_views(self, c.augment, c.subset))
        pool = self.data.train
        if c.unlabeled:
            transform = self.transform("test" if c.augment == "none" else c.augment)
            pool, ulb = unlabelled_pool(self)
            self.add_stream(
                "unlabeled", ViewDataset(pool, {"x": transform}, ulb), c.unlabeled_batch_size or c.batch_size
            )
        self.cache = TeacherLogitCache(len(pool)) if c.cache_teacher else None
        if self.cache is not None:
            self.register_state("teacher_logits", self.cache)
        num_classes = classes[self.student] or self.data.num_classes
        p, o = c.temperature_policy, c.ctkd
        self.learned_tau = None  # CTKD's temperature module: optimized with the student, checkpointed
        if p == "ctkd_global":
            self.learned_tau = self.register_module("temperature", GlobalTemperature(o.t_start, o.t_range, o.init))
        elif p == "ctkd_instance":
            tau_net = InstanceTemperature(num_classes, o.hidden, o.t_start, o.t_range, o.init)
            self.learned_tau = self.register_module("temperature", tau_net)

    def train_step(self, batch):
        c = self.cfg
        x, y, idx = batch["train"]["x"], batch["train"]["y"], batch["train"]["idx"]
        n = len(y)
        if c.unlabeled:  # one forward over labelled + unlabelled images
            x, idx = torch.cat([x, batch["unlabeled"]["x"]]), torch.cat([idx, batch["unlabeled"]["idx"]])
        s = self.model(self.student)(x).logits
        t = self.teacher_logits(x, idx)
        # unlabelled images have no label: DKD's target/non-target split uses the teacher's prediction there
        target = torch.cat([y, t[n:].argmax(dim=1)]) if c.unlabeled else y
        tau = self.temperature(s, t)
        if c.ka.mode != "none":
            t = knowledge_adjust(t, target, c.ka.mode, tau, c.ka.correct_prob)
        if c.loss == "kd":
            kd = kd_loss(s, t, tau)
        else:
            warmup = min((self.progress.epoch + 1) / c.dkd.warmup_epochs, 1.0) if c.dkd.warmup_epochs else 1.0
            kd = warmup * dkd_loss(s, t, target, c.dkd.alpha, c.dkd.beta, tau)
        terms = {"ce": F.cross_entropy(s[:n], y), "kd": kd, "acc": accuracy(s[:n], y)}
        if c.temperature_policy != "fixed":
            terms["tau"] = tau.detach().float().mean()
        return terms

    def teacher_logits(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits (no graph), from the cache when one is kept."""

        @torch.no_grad()
        def compute() -> torch.Tensor:
            return self.model(self.teacher)(x).logits

        return compute() if self.cache is None else self.cache.lookup(idx, compute)

    def temperature(self, s: torch.Tensor, t: torch.Tensor) -> float | torch.Tensor:
        """tau for this step: a float, a learned scalar, or one value per sample."""
        c = self.cfg
        if c.temperature_policy == "fixed":
            return c.temperature
        if c.temperature_policy == "dtd":
            d = c.dtd
            return dtd_temperature(s, t, c.temperature, d.beta, d.weights, d.gamma, d.min_temperature)
        lam = ctkd_lambda(self.progress.epoch + 1, c.ctkd.ramp_epochs, c.ctkd.lambda_max)
        return self.learned_tau(lam) if c.temperature_policy == "ctkd_global" else self.learned_tau(t, s, lam)
