"""Teacher-student distillation: what every method with one frozen teacher and one trained student shares.

    TeacherStudent       the pair (`train: [student]`, `uses: [teacher]`) with the same classes, the training
                         stream(s), then the frozen teacher (eval mode, no_grad, optionally its logits cached)
    LogitDistillation    the KD family's step around one term, `distill(student_logits, teacher_logits, target,
                         tau)`: the batch (mixup / CutMix, an unlabelled stream, no labels at all), both forwards,
                         the temperature policy, the teacher-target transform (KA), CE and the diagnostics

A logit-distillation method (kd.py, dkd.py) is a config with its own options and a `distill` that reads like the
paper's equation. A method with its own losses on features or heads (PAD, CSKD, SSKD, HSAKD, CRD) uses
`TeacherStudent.setup_pair` and writes its own `train_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ssl_kd.components import TEMPERATURE, KAOptions, Teacher, TeacherTarget
from ssl_kd.config.schema import StageConfig
from ssl_kd.data import MixConfig
from ssl_kd.engine import Stage
from ssl_kd.losses import accuracy, soft_cross_entropy
from ssl_kd.stages._common import Augment, Subset, check_same_classes, labelled_views, mix_batch, unlabelled_pool


class TeacherStudent(Stage):
    """One frozen teacher distilled into one trained student."""

    student: str  # the trained model's name
    teacher_name: str  # the frozen model's name
    teacher: Teacher
    num_classes: int

    def setup_pair(self, streams: Callable[[], None] | None = None, cache: bool = False) -> None:
        """Names and classes of the pair, the training streams (default: the labelled images under `cfg.augment`),
        then the frozen teacher (after the streams: a logit cache holds a row for every image they can produce)."""
        self.student, self.teacher_name = self.single("train"), self.single("uses")
        classes = check_same_classes(self, self.student, self.teacher_name)
        self.num_classes = classes[self.student] or self.data.num_classes
        if streams is None:
            self.add_stream("train", labelled_views(self, self.cfg.augment, "all"))
        else:
            streams()
        self.teacher = self.frozen_teacher(self.teacher_name, cache=cache)


class LogitDistillationConfig(StageConfig):
    """Options every logit-distillation stage has (its loss term is `kd`, next to the labelled `ce`)."""

    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 0.1, "kd": 0.9})
    temperature: TEMPERATURE.annotation() = TEMPERATURE.field({"policy": "fixed", "tau": 4.0})
    ka: KAOptions = Field(default_factory=KAOptions)  # teacher-target transform (knowledge adjustment)
    unlabeled: bool = False  # KD also on data.ssl's unlabelled images (needs data.ssl.num_labels)
    unlabeled_batch_size: int | None = Field(None, ge=1)  # default: batch_size
    augment: Augment = "weak"
    subset: Subset = "all"  # with unlabeled: true always "labeled"
    cache_teacher: bool = False  # keep each image's teacher logits after the first epoch (needs augment: none)
    mix: MixConfig = Field(default_factory=MixConfig)  # mixup / CutMix on the training batch (DM-KD: 0.4 / 0.25)

    # old keys of the temperature block (before it was one registered block): `temperature_policy: P` with the
    # number `temperature` as its tau and the options in `P`'s own block (`ctkd:` / `dtd:`)
    _TEMPERATURE_BLOCKS: ClassVar[dict[str, str]] = {"ctkd_global": "ctkd", "ctkd_instance": "ctkd", "dtd": "dtd"}

    @classmethod
    def migrate(cls, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        data, notes = super().migrate(data)
        old = [k for k in ("temperature_policy", "ctkd", "dtd") if k in data]
        if not old:
            return data, notes
        if isinstance(data.get("temperature"), dict):
            raise ValueError(f"give the temperature as one block `temperature: {{policy: ...}}`, not with {old}")
        policy = data.pop("temperature_policy", "fixed")
        block: dict[str, Any] = {"policy": policy}
        if "temperature" in data:
            block["tau"] = data.pop("temperature")
        for key in ("ctkd", "dtd"):
            opts = data.pop(key, None)
            if opts is not None and cls._TEMPERATURE_BLOCKS.get(policy) == key:
                block.update(opts)
            elif opts is not None:
                notes.append(f"`{key}:` is ignored: the temperature policy is {policy}")
        data["temperature"] = block
        shown = ", ".join(f"{k}: {v}" for k, v in block.items())
        notes.append(f"`{', '.join(old)}` (with `temperature: <number>`) is now `temperature: {{{shown}}}`")
        return data, notes

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
    def _unlabeled_subset(self) -> LogitDistillationConfig:
        if self.unlabeled:
            self.subset = "labeled"  # the default "all" would put every image in the CE batch
        return self

    @model_validator(mode="after")
    def _mix_and_labels(self) -> LogitDistillationConfig:
        if self.mix.kind != "none" and (self.cache_teacher or self.unlabeled):
            raise ValueError("mix: a mixed batch is new every step, so it works without cache_teacher and unlabeled")
        if not self.uses_labels and self.ka.mode != "none":
            raise ValueError("ka corrects the teacher with the labels, but loss_weights.ce is 0 (no labels are read)")
        return self

    def blocks_in_use(self) -> set[str]:
        """The temperature policy always shapes the step; KA when it is on."""
        return {"temperature"} | ({"ka"} if self.ka.mode != "none" else set())

    @property
    def uses_labels(self) -> bool:
        """A CE weight of 0 (DM-KD) means the step reads no label at all."""
        return self.loss_weights.get("ce", 0.0) != 0


class LogitDistillation(TeacherStudent):
    """The KD-family step. `distill` is the method; everything else here is the same for KD, DKD, CTKD, DTD, KA,
    DM-KD and unlabelled KD:

        x  = mix(x) (optional)     [x; x_unlabelled] (optional)
        z_s, z_t = student(x), teacher(x)                      teacher frozen, optionally cached
        target = y, or the teacher's argmax where no label is read
        tau = temperature policy(z_s, z_t)      z_t = KA(z_t, target, tau) (optional)
        L = w_ce CE(z_s, y) + w_kd distill(z_s, z_t, target, tau)
    """

    cfg: LogitDistillationConfig

    def distill(
        self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, tau: float | torch.Tensor
    ) -> torch.Tensor:
        """The method's distillation term (weighted as `kd`)."""
        raise NotImplementedError

    def setup(self) -> None:
        c = self.cfg
        self.setup_pair(self._add_streams, cache=c.cache_teacher)
        # fixed | DTD (rule-based) | CTKD (learned: optimized with the student, checkpointed)
        self.temperature = TEMPERATURE.build(c.temperature, num_classes=self.num_classes, progress=self.progress)
        self.register_module("temperature", self.temperature)
        self.target_transform = TeacherTarget(c.ka)

    def _add_streams(self) -> None:
        c = self.cfg
        self.add_stream("train", labelled_views(self, c.augment, c.subset))
        if c.unlabeled:
            transform = self.transform("test" if c.augment == "none" else c.augment)
            pool, ulb = unlabelled_pool(self)
            self.add_stream(
                "unlabeled", self.view_dataset(pool, {"x": transform}, ulb), c.unlabeled_batch_size or c.batch_size
            )

    def train_step(self, batch):
        c = self.cfg
        x, idx = batch["train"]["x"], batch["train"]["idx"]
        y = batch["train"]["y"] if c.uses_labels else None  # DM-KD (ce weight 0): labels are never read
        n = len(x)
        soft_y = None
        mixed, mix = mix_batch(c.mix, x, y, self.data.num_classes)
        if mixed is not None:  # mixup / CutMix: both networks see the mixed images
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
        t = self.target_transform(t, target, tau)
        losses = {"kd": self.distill(s, t, target, tau)}
        diagnostics = {"agree": (s[:n].argmax(dim=1) == t[:n].argmax(dim=1)).float().mean()}
        if y is not None:
            losses["ce"] = F.cross_entropy(s[:n], y) if soft_y is None else soft_cross_entropy(s[:n], soft_y)
            diagnostics["acc"] = accuracy(s[:n], y)
        if mix is not None:
            diagnostics["lam"] = torch.tensor(float(mix.lam), device=x.device)
        if isinstance(tau, torch.Tensor):  # a rule-based or learned temperature (a fixed one is a number)
            diagnostics["tau"] = tau.detach().float().mean()
        return losses, diagnostics
