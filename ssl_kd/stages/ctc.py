"""CTC, contrastive temporal coding (Cui et al., ECCV 2022, arXiv 2203.03871; DTennant/dt-tradeoff@a36516be
train_ctc.py): two stages with a frozen snapshot of the model passed between them. f = the model's pooled feature
(`ModelOutput.feat`).

    stage `instdisc` (epochs 1..E1):
        v = normalize(P f)                          P: a random Linear(d -> 128), never optimized (quirk)
        L = CE(z, y) + alpha * CE(v M^T / tau1, i)  instance discrimination over the N x 128 memory M
        M_i <- normalize(mu1 M_i + (1 - mu1) v_i)   momentum update of the batch's rows (every rank's)
        weight decay = wd x weight_decay_coef       (the config's optimizer.weight_decay: 5e-4 x 2)

    transition (the `crd` stage's start):
        snapshot theta_T <- theta                   `snapshot: {of: net, as: net_t0}`: frozen, eval, no grad
        weight decay reset, LR restart at 0.1 x base with its own cosine    (the stage's own optimizer/scheduler)
        refill: M_s[i] = g_s(f_T(x_i)), M_t[i] = g_t(f_T(x_i)) in one pass     (`refill_memory`, as README recipes)

    stage `crd` (epochs E1+1..E):
        s = g_s(f_theta(x)), t = g_t(f_T(x))        g_s, g_t: Linear(d -> 128) + L2 norm, both optimized (quirk)
        idx = [i, K negatives of other classes]     K = 16384, exact positive
        u_s = exp(M_t[idx] s / tau2) / Z_s, u_t = exp(M_s[idx] t / tau2) / Z_t       Z fixed on the first batch
        L = CE(z, y) + beta * (NCE(u_s) + NCE(u_t))                                   CRD's binary NCE
        M_s[i] <- norm(mu2 M_s[i] + (1 - mu2) s_i), M_t[i] <- norm(mu2 M_t[i] + (1 - mu2) t_i)

Both stage types are general: `instdisc` is supervised training regularised by instance discrimination, `crd` is
CRD against any frozen model in `uses` (a snapshot, or a trained teacher of the same or another architecture).
`preset: transferability | discriminability` sets the README recipes' alpha/beta, tau and mu (keys given
explicitly win); `preset: none` leaves the reference's argparse defaults. Known differences from the reference:
it keeps one SGD across both phases, so its momentum buffers carry into stage 2 (their effect decays as 0.9^k over
the first steps); its cosine is cos(pi e / (E + 1)) over 1-based epochs, ours cos(pi k / E) over 0-based ones.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ssl_kd.components import ClassNegatives, FixedNormaliser
from ssl_kd.config.schema import OptimizerConfig, SchedulerConfig, StageConfig
from ssl_kd.engine import Stage, register_stage
from ssl_kd.losses import accuracy, contrast_exp_scores, crd_nce_loss, instance_discrimination_loss
from ssl_kd.memory import MemoryBank
from ssl_kd.models import Embed, seeded_linear
from ssl_kd.stages._common import Augment, feat_dim, labelled_views
from ssl_kd.stages._teacher_student import TeacherStudent

Preset = Literal["transferability", "discriminability", "none"]

# The two recipes of dt-tradeoff's README (@a36516be): stage-1 (alpha, tau1, mu1) and stage-2 (beta, tau2, mu2).
PRESETS: dict[str, dict[str, dict[str, float]]] = {
    "transferability": {
        "instdisc": {"inst": 0.5, "temperature": 0.10, "momentum": 0.9},
        "crd": {"crd": 1.0, "temperature": 0.10, "momentum": 0.9},
    },
    "discriminability": {
        "instdisc": {"inst": 0.1, "temperature": 0.50, "momentum": 0.9},
        "crd": {"crd": 1.0, "temperature": 0.40, "momentum": 0.9},
    },
}
REFERENCE_LR = 0.05  # both phases' base LR; stage 2 restarts at 0.1 x this


def _apply_preset(data: Any, stage: str, term: str, default: str) -> Any:
    """Fill the keys the preset sets and the YAML does not: the term's loss weight, temperature, momentum."""
    if not isinstance(data, dict):
        return data
    name = data.get("preset", default)
    if name not in PRESETS:
        return data  # "none" (argparse defaults) or a bad value the Literal reports
    values = PRESETS[name][stage]
    out = {k: v for k, v in values.items() if k != term}
    given = data.get("loss_weights") if isinstance(data.get("loss_weights"), dict) else {}
    return {**out, **data, "loss_weights": {term: values[term], **given}}


class InstDiscConfig(StageConfig):
    """CTC stage 1. Class defaults are the reference's argparse defaults (alpha 0.1, tau 0.1, mu 0.5); the
    default preset (transferability) replaces them with its recipe unless a key is given."""

    preset: Preset = "transferability"
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "inst": 0.1})  # inst = alpha
    temperature: float = Field(0.1, gt=0)  # tau1
    momentum: float = Field(0.5, ge=0, le=1)  # mu1, memory momentum
    dim: int = Field(128, ge=1)  # the memory's width (`instance_dim`)
    train_projection: bool = False  # reference quirk: P sits in no optimizer group (a fixed random projection)
    augment: Augment = "weak"
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(lr=REFERENCE_LR, momentum=0.9, weight_decay=5e-4 * 2.0)
    )  # weight_decay x weight_decay_coef (README: 2.0)
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig(name="cosine", interval="epoch"))

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return _apply_preset(data, "instdisc", "inst", "transferability")


class CRDConfig(StageConfig):
    """CTC stage 2 (and CRD against any frozen model in `uses`). Class defaults are the reference's argparse
    defaults (beta 1.0, tau 0.07, mu 0.5, K 16384); the default preset (transferability) sets its recipe."""

    preset: Preset = "transferability"
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "crd": 1.0})  # crd = beta
    temperature: float = Field(0.07, gt=0)  # tau2 (`nce_t`)
    momentum: float = Field(0.5, ge=0, le=1)  # mu2 (`nce_m`)
    dim: int = Field(128, ge=1)  # g_s / g_t output (`contrast_feat_dim`)
    num_negatives: int = Field(16384, ge=1)  # K (`nce_k`), drawn from other classes
    refill_memory: bool = True  # `--update_memory_bank` (both README recipes): set both memories in one pass
    refill_augment: Augment = "weak"  # the reference refills from its (augmented) training loader
    train_teacher_embed: bool = True  # reference quirk: g_t stays in the optimizer built before stage 2
    augment: Augment = "weak"
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(lr=0.1 * REFERENCE_LR, momentum=0.9, weight_decay=5e-4)
    )  # LR restart at 0.1 x base (`stage_two_decay_rate`), weight decay reset
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig(name="cosine", interval="epoch"))

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return _apply_preset(data, "crd", "crd", "transferability")


@register_stage("instdisc")
class InstDisc(Stage):
    """CE + alpha * instance discrimination against a momentum memory of every training image."""

    Config = InstDiscConfig
    cfg: InstDiscConfig

    def setup(self) -> None:
        c = self.cfg
        self.net = self.single("train")
        self.add_stream("train", labelled_views(self, c.augment, "all"))
        images = self.data.train
        projection = seeded_linear(feat_dim(self, self.net), c.dim, self.seed("projection"))
        self.register_module("projection", projection.requires_grad_(c.train_projection))
        self.memory = self.register_state(
            "memory", MemoryBank(len(images), c.dim, c.momentum, self.seed("memory"), self.device)
        )

    def train_step(self, batch):
        c = self.cfg
        part = batch["train"]
        y, idx = part["y"], part["idx"]
        out = self.forward(self.net, part)
        v = self.module("projection")(out.feat)  # normalised inside the loss and the update
        inst = instance_discrimination_loss(v, self.memory.memory, idx, c.temperature)
        self.memory.update(idx, v)
        return {"ce": F.cross_entropy(out.logits, y), "inst": inst}, {"acc": accuracy(out.logits, y)}


@register_stage("crd")
class CRD(TeacherStudent):
    """CE + beta * CRD's two-sided NCE between the trained model and a frozen one (`uses`), each side contrasted
    with the other side's momentum memory over K negatives of other classes."""

    Config = CRDConfig
    cfg: CRDConfig

    def setup(self) -> None:
        c = self.cfg
        self.setup_pair()
        teacher = self.teacher_name
        images = self.data.train
        self.num_data = len(images)
        dev = self.device
        self.register_module("embed_s", Embed(feat_dim(self, self.student), c.dim, self.seed("embed_s")))
        embed_t = Embed(feat_dim(self, teacher), c.dim, self.seed("embed_t"))
        self.register_module("embed_t", embed_t.requires_grad_(c.train_teacher_embed))
        n = self.num_data  # M_s holds the trained side's embeddings, M_t the frozen side's
        self.memory_s = self.register_state("memory_s", MemoryBank(n, c.dim, c.momentum, self.seed("m_s"), dev))
        self.memory_t = self.register_state("memory_t", MemoryBank(n, c.dim, c.momentum, self.seed("m_t"), dev))
        self.z = self.register_state("z", FixedNormaliser(self.num_data))
        self.negatives = ClassNegatives(images.targets, c.num_negatives, self.seed("negatives"), dev)
        self.refill_set = labelled_views(self, c.refill_augment, "all")

    @torch.no_grad()
    def on_stage_start(self) -> None:
        """Refill both memories through the frozen model, once (`--update_memory_bank`): M_s = g_s(f_T(x)),
        M_t = g_t(f_T(x)) for every training image."""
        if not self.cfg.refill_memory:
            return
        for part in self.one_pass(self.refill_set, self.cfg.batch_size):
            f_t = self.teacher.output(part["x"]).feat
            valid = part["valid"]
            self.memory_s.update(part["idx"], self.modules["embed_s"](f_t), momentum=0.0, valid=valid)
            self.memory_t.update(part["idx"], self.modules["embed_t"](f_t), momentum=0.0, valid=valid)

    def train_step(self, batch):
        c = self.cfg
        part = batch["train"]
        x, y, idx = part["x"], part["y"], part["idx"]
        out = self.forward(self.student, part)
        s = self.module("embed_s")(out.feat)
        t = self.module("embed_t")(self.teacher.output(x).feat)  # frozen features; g_t itself trains (quirk)
        contrast_idx = self.negatives(idx, y, self.progress.step)  # [own index, K of other classes]
        e_s = contrast_exp_scores(s, self.memory_t.memory, contrast_idx, c.temperature)
        e_t = contrast_exp_scores(t, self.memory_s.memory, contrast_idx, c.temperature)
        z_s, z_t = self.z(e_s, e_t)  # fixed on the stage's first batch
        crd = crd_nce_loss(e_s / z_s, self.num_data) + crd_nce_loss(e_t / z_t, self.num_data)
        self.memory_s.update(idx, s)
        self.memory_t.update(idx, t)
        return {"ce": F.cross_entropy(out.logits, y), "crd": crd}, {"acc": accuracy(out.logits, y)}
