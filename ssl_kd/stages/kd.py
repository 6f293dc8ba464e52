"""Teacher-student logit distillation: the KD family of kd_and_frameworks.md Part A as one configurable step.

    z_t = teacher(x) (frozen, eval mode, no_grad; optionally cached)     z_s = student(x)
    tau = temperature policy(z_s, z_t)     fixed | ctkd_global | ctkd_instance | dtd
    z_t = KA(z_t, y, tau)                  optional: correct the target where the teacher is wrong (lsr | ps)
    L   = w_ce * CE(z_s, y) + w_kd * { tau^2 KL(z_t || z_s)                        loss: kd
                                     { w_e * (alpha TCKD + beta NCKD)              loss: dkd
    w_e = min(epoch / warmup, 1)           DKD's warm-up, a scheduled scalar (1-based epochs, as mdistiller)

Defaults are mdistiller's CIFAR-100 recipe (KD: tau 4, w_ce 0.1, w_kd 0.9; DKD: w_ce 1, w_kd 1, alpha 1, beta 8,
warm-up 20 epochs). DOT is not a stage option but an optimizer (`optimizer.name: dot`) that backpropagates the
`kd` and `ce` terms separately through the runner's loss groups. With `unlabeled: true` the KD term also covers
a stream of unlabelled images (CE stays on the labelled batch).

DM-KD (nextwave.md §5.6) is this stage on synthetic images (`data.train_source`, real test set) with
`loss_weights: {ce: 0, kd: 1}`: with a CE weight of 0 the step never reads the batch's labels (DKD's target class is
then the teacher's prediction; the logged `agree` is the student's agreement with the teacher). `mix:` mixes the
training batch (mixup or CutMix, ssl_kd.data.mixing) before both forwards: the student learns the teacher's logits
on the mixed images, and the CE (if weighted) uses the mixed one-hot labels. The teacher is always called in eval
mode under no_grad (DM-KD's reference builds the teacher's graph; that changes no result, only memory).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ssl_kd.components import CTKDOptions, DTDOptions, build_temperature, ramp
from ssl_kd.config.schema import StageConfig, Strict
from ssl_kd.data import MixConfig, mix_tensors, one_hot, sample_mix
from ssl_kd.engine import Stage, register_stage
from ssl_kd.losses import accuracy, dkd_loss, kd_loss, knowledge_adjust, soft_cross_entropy
from ssl_kd.memory import TeacherLogitCache  # noqa: F401  (re-exported: the cache a cached teacher keeps)
from ssl_kd.stages._common import Augment, Subset, check_same_classes, labelled_views, unlabelled_pool


class DKDOptions(Strict):
    """DKD (§A2). Per-pair beta in mdistiller: 8 by default, 6 for wrn_40_2 / vgg13 teachers, 2 for resnet56/110."""

    alpha: float = Field(1.0, ge=0)  # TCKD weight
    beta: float = Field(8.0, ge=0)  # NCKD weight
    warmup_epochs: int = Field(20, ge=0)  # DKD term x min(epoch / warmup, 1), 1-based epochs; 0 = no warm-up


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
    mix: MixConfig = Field(default_factory=MixConfig)  # mixup / CutMix on the training batch (DM-KD: 0.4 / 0.25)

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

    def blocks_in_use(self) -> set[str]:
        """The loss's and the temperature policy's blocks, so a dry run tells KD, DKD, CTKD and DTD apart."""
        used = {"dkd"} if self.loss == "dkd" else set()
        used |= {"ctkd"} if self.temperature_policy.startswith("ctkd") else set()
        used |= {"dtd"} if self.temperature_policy == "dtd" else set()
        return used | ({"ka"} if self.ka.mode != "none" else set())

    @model_validator(mode="after")
    def _unlabeled_subset(self) -> KDConfig:
        if self.unlabeled:
            self.subset = "labeled"  # the default "all" would put every image in the CE batch
        return self

    @model_validator(mode="after")
    def _mix_and_labels(self) -> KDConfig:
        if self.mix.kind != "none" and (self.cache_teacher or self.unlabeled):
            raise ValueError("mix: a mixed batch is new every step, so it works without cache_teacher and unlabeled")
        if not self.uses_labels and self.ka.mode != "none":
            raise ValueError("ka corrects the teacher with the labels, but loss_weights.ce is 0 (no labels are read)")
        return self

    @property
    def uses_labels(self) -> bool:
        """A CE weight of 0 (DM-KD) means the step reads no label at all."""
        return self.loss_weights.get("ce", 0.0) != 0


@register_stage("kd")
class KD(Stage):
    Config = KDConfig
    cfg: KDConfig

    def setup(self) -> None:
        c = self.cfg
        self.student = self.single("train")
        teacher = self.single("uses")
        classes = check_same_classes(self, self.student, teacher)
        self.add_stream("train", labelled_views(self, c.augment, c.subset))
        if c.unlabeled:
            transform = self.transform("test" if c.augment == "none" else c.augment)
            pool, ulb = unlabelled_pool(self)
            self.add_stream(
                "unlabeled", self.view_dataset(pool, {"x": transform}, ulb), c.unlabeled_batch_size or c.batch_size
            )
        self.teacher = self.frozen_teacher(teacher, cache=c.cache_teacher)
        num_classes = classes[self.student] or self.data.num_classes
        # fixed | DTD (rule-based) | CTKD (learned: optimized with the student, checkpointed)
        policy = build_temperature(c.temperature_policy, c.temperature, num_classes, c.ctkd, c.dtd, self.progress)
        self.register_module("temperature", policy)
        self.warmup = self.schedule(ramp("linear", 0.0, 1.0, c.dkd.warmup_epochs, unit="epoch", one_based=True))

    def train_step(self, batch):
        c = self.cfg
        x, idx = batch["train"]["x"], batch["train"]["idx"]
        y = batch["train"]["y"] if c.uses_labels else None  # DM-KD (ce weight 0): labels are never read
        n = len(x)
        soft_y = None
        mix = sample_mix(c.mix, n, (x.shape[-2], x.shape[-1])) if c.mix.kind != "none" else None
        if mix is not None:  # mixup / CutMix: both networks see the mixed images
            parts = {"x": x} if y is None else {"x": x, "y": one_hot(y, self.data.num_classes, torch.float32)}
            mixed = mix_tensors(parts, mix)
            x, soft_y = mixed["x"], mixed.get("y")
        if c.unlabeled:  # one forward over labelled + unlabelled images
            x, idx = torch.cat([x, batch["unlabeled"]["x"]]), torch.cat([idx, batch["unlabeled"]["idx"]])
        s = self.model(self.student)(x).logits
        t = self.teacher(x, idx)  # eval mode, no_grad
        # images without a label (unlabelled, or none read): DKD's target/non-target split uses the teacher's argmax
        if y is None:
            target = t.argmax(dim=1)
        else:
            target = torch.cat([y, t[n:].argmax(dim=1)]) if c.unlabeled else y
        tau = self.module("temperature")(s, t)
        if c.ka.mode != "none":
            t = knowledge_adjust(t, target, c.ka.mode, tau, c.ka.correct_prob)
        tau2 = c.temperature_policy != "dtd" or c.dtd.tau_squared  # DTD's port leaves tau^2 out (DTDOptions)
        if c.loss == "kd":
            kd = kd_loss(s, t, tau, tau2)
        else:
            kd = self.warmup.value * dkd_loss(s, t, target, c.dkd.alpha, c.dkd.beta, tau, tau2)
        losses = {"kd": kd}
        diagnostics = {"agree": (s[:n].argmax(dim=1) == t[:n].argmax(dim=1)).float().mean()}
        if y is not None:
            losses["ce"] = F.cross_entropy(s[:n], y) if soft_y is None else soft_cross_entropy(s[:n], soft_y)
            diagnostics["acc"] = accuracy(s[:n], y)
        if mix is not None:
            diagnostics["lam"] = torch.tensor(float(mix.lam), device=x.device)
        if c.temperature_policy != "fixed":
            diagnostics["tau"] = tau.detach().float().mean()
        return losses, diagnostics
