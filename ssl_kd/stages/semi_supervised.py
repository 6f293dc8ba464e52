"""The FixMatch-family step, composed from parts chosen by config (TorchSSL@f26e1d4 models/fixmatch, models/flexmatch;
FullMatch@c54c0b9 models/fullmatch, models/fullflex).

    zl, zw, zs = model([x_lb; weak(x_ulb); strong(x_ulb)])        one pass, BN over the concatenation
    conf, yhat = max / argmax softmax(zw)                           pseudo-labels from the weak view
    mask       = conf >= tau                  (threshold: {type: fixed, tau})    FixMatch
               = conf >= tau * M(beta[yhat])  (threshold: {type: flex, tau})     FlexMatch curriculum (all ranks)
    k          = max rank of yhat in zs over the global batch       FullMatch's adaptive k
    L = w_sup CE(zl, y) + w_unsup L_u(zs, yhat, mask) + on(step) [w_anl ANL(zw, zs, k) + w_eml EML(zw, zs, k, mask)]

FixMatch, FlexMatch, FullMatch (= FixMatch + EML + ANL) and FullFlex (= FlexMatch + EML + ANL) are presets of
this one step: they differ only in the defaults of `threshold` and `loss_weights`, so e.g. FixMatch + ANL is
`type: fixmatch` with `loss_weights: {anl: 1.0}`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_kd.components import THRESHOLD, global_adaptive_k, ramp
from ssl_kd.config.schema import EMAConfig, EvalConfig, OptimizerConfig, SchedulerConfig, StageConfig
from ssl_kd.engine import Plot, Stage, register_stage
from ssl_kd.losses import accuracy
from ssl_kd.losses.ssl import anl_loss, consistency_loss, eml_loss
from ssl_kd.stages._common import unlabelled_pool


class SemiSupervisedConfig(StageConfig):
    """Defaults reproduce TorchSSL/USB classic_cv on CIFAR-10 (TorchSSL@f26e1d4
    config/fixmatch/fixmatch_cifar10_*_0.yaml, USB@1ef4cbe config/classic_cv); paper settings in configs/."""

    loss_weights: dict[str, float] = Field(default_factory=lambda: {"sup": 1.0, "unsup": 1.0, "eml": 0.0, "anl": 0.0})
    iters: int | None = Field(2**20, ge=0)
    steps_per_epoch: int | None = Field(1024, ge=1)  # USB's "epoch" of 1024 iterations (a reporting unit)
    batch_size: int = Field(64, ge=1)  # labelled, global
    uratio: int = Field(7, ge=1)  # mu: unlabelled batch = uratio * batch_size
    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "fixed"})  # {type: fixed | flex, tau, ...}
    pseudo_label: Literal["hard", "soft"] = "hard"  # the references use hard labels
    soft_temperature: float = Field(0.5, gt=0)  # T for soft pseudo-labels (unused with hard labels)
    use_cat: bool = True  # one forward over [lb; weak; strong]; False: separate passes, weak under no_grad
    detach_eml_target: bool = False  # the reference lets the gradient flow through EML's soft target q
    eml_anl_start: int = Field(0, ge=0)  # steps without EML/ANL (FullMatch's --loss_warm: 5 * 1024)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(
            lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4, no_decay_bn_bias=True
        )  # fmt: skip
    )
    scheduler: SchedulerConfig = Field(
        default_factory=lambda: SchedulerConfig(name="cosine_cycles", cycles=7 / 16, interval="step")
    )
    ema: EMAConfig = Field(default_factory=lambda: EMAConfig(enabled=True, decay=0.999))
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig(every=5000, unit="steps", batch_size=1024))

    @classmethod
    def migrate(cls, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """`tau` and `flex_warmup` were keys of the stage; they are options of the threshold block now."""
        data, notes = super().migrate(data)
        old = {k: data.pop(k) for k in ("tau", "flex_warmup") if k in data}
        if not old:
            return data, notes
        block = data.get("threshold")
        block = THRESHOLD.shorthand(block) if block is not None and not isinstance(block, dict) else dict(block or {})
        if not isinstance(block, dict):
            raise ValueError(f"threshold: expected a policy name or a block, got {data.get('threshold')!r}")
        moved = {"tau": old["tau"]} if "tau" in old else {}
        if "flex_warmup" in old:
            moved["warmup"] = old["flex_warmup"]
        clash = sorted(set(block) & set(moved))
        if clash:
            raise ValueError(f"threshold.{clash[0]} is given twice (also as an old top-level key); keep the block's")
        data["threshold"] = {**block, **moved}
        shown = ", ".join(f"{k}: {v}" for k, v in moved.items())
        notes.append(f"`{', '.join(old)}` is now part of the threshold block: `threshold: {{{shown}}}`")
        return data, notes

    def blocks_in_use(self) -> set[str]:
        return {"threshold"}


class FlexMatchConfig(SemiSupervisedConfig):
    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "flex"})


class FullMatchConfig(SemiSupervisedConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"sup": 1.0, "unsup": 1.0, "eml": 1.0, "anl": 1.0})


class FullFlexConfig(FullMatchConfig):
    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "flex"})


@register_stage("fixmatch")
class SemiSupervised(Stage):
    Config = SemiSupervisedConfig
    cfg: SemiSupervisedConfig
    plots = (
        Plot("pseudo_labels", {"mask": "mask rate", "pl_acc": "pseudo-label accuracy"},
             "pseudo-labels on the unlabelled batch", "fraction"),
        Plot("adaptive_k", {"k": "k"}, "adaptive k", "k"),
        Plot("threshold", {"threshold": "threshold"}, "mean class threshold", "threshold"),
        Plot("class_thresholds", {"class_thresholds": "threshold"}, "class thresholds", "threshold", kind="bars"),
    )  # fmt: skip

    def setup(self) -> None:
        c = self.cfg
        self.net = self.single("train")
        lb = self.ssl_split()[0]
        pool, ulb = unlabelled_pool(self)  # with STL-10's unlabeled split / SVHN extra when present
        weak, strong = self.transform("weak"), self.transform("strong")
        self.add_stream("labeled", self.view_dataset(self.data.train, {"x": weak}, lb), c.batch_size)
        self.add_stream("unlabeled", self.view_dataset(pool, {"w": weak, "s": strong}, ulb), c.uratio * c.batch_size)
        # indexed by position in the pool; FlexMatch's history is one global history over all processes
        self.threshold = THRESHOLD.build(
            c.threshold, num_samples=len(pool), num_classes=self.data.num_classes, device=self.device
        )
        if hasattr(self.threshold, "state_dict"):
            self.register_state("selected_label", self.threshold)
        w = c.loss_weights
        self.negative_terms = bool(w.get("eml") or w.get("anl"))
        self.eml_anl_on = self.schedule(ramp("step", 0.0, 1.0, c.eml_anl_start, unit="step"))  # --loss_warm

    def train_step(self, batch):
        c = self.cfg
        xl, yl = batch["labeled"]["x"], batch["labeled"]["y"]
        u = batch["unlabeled"]
        net = self.model(self.net)
        if c.use_cat:
            zl, zw, zs = net(torch.cat([xl, u["w"], u["s"]])).logits.split([len(xl), len(u["w"]), len(u["s"])])
            zw = zw.detach()
        else:
            zl = net(xl).logits
            with torch.no_grad():
                zw = net(u["w"]).logits
            zs = net(u["s"]).logits

        conf, yhat = F.softmax(zw.float(), dim=1).max(dim=1)
        mask = (conf >= self.threshold.thresholds(yhat)).float()
        target = yhat if c.pseudo_label == "hard" else F.softmax(zw.float() / c.soft_temperature, dim=1)

        losses = {"sup": F.cross_entropy(zl, yl), "unsup": consistency_loss(zs, target, mask)}
        diagnostics = {}
        if self.negative_terms:
            k = global_adaptive_k(zw, zs)
            on = self.eml_anl_on.value
            tau = c.threshold.tau
            losses["anl"] = on * anl_loss(zw, zs, k, tau)
            losses["eml"] = on * eml_loss(zw, zs, k, mask, tau, c.detach_eml_target)
            diagnostics["k"] = k.float()
        self.threshold.update(u["idx"], conf, yhat)
        diagnostics.update(self.threshold.diagnostics())

        # true labels of the unlabelled batch are never used for training
        known = u["y"] >= 0  # STL-10's unlabeled split has no labels at all
        diagnostics["mask"] = mask.mean()
        diagnostics["pl_acc"] = ((yhat == u["y"]) & known).sum() / known.sum().clamp_min(1)
        diagnostics["sup_acc"] = accuracy(zl, yl)
        return losses, diagnostics

    def eval_extras(self) -> dict:
        return self.threshold.eval_extras()


@register_stage("flexmatch")
class FlexMatch(SemiSupervised):
    Config = FlexMatchConfig


@register_stage("fullmatch")
class FullMatch(SemiSupervised):
    Config = FullMatchConfig


@register_stage("fullflex")
class FullFlex(SemiSupervised):
    Config = FullFlexConfig
