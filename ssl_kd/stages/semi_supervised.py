"""The one SSL step, composed from parts chosen by config (TorchSSL@f26e1d4 models/fixmatch, models/flexmatch;
FullMatch@c54c0b9 models/fullmatch, models/fullflex; microsoft/Semi-supervised-learning = semilearn 0.3.2
(USB@1ef4cbe) semilearn/algorithms/{freematch,softmatch,adamatch,dash,uda,pseudolabel,meanteacher,pimodel}).

    zl, zw, zs = model([x_lb; view1(x_ulb); view2(x_ulb)])     views: weak/strong | weak/weak (Pi, MT) | weak only
                                                                (PL: zs = zw); MT: zw from the EMA weights
    p          = dist_align(softmax(zw), softmax(zl))           none | uniform (SoftMatch) | labelled (AdaMatch)
    w          = threshold.weights(p)                           fixed | flex | freematch | softmatch | adamatch |
                                                                dash | none: per-sample weight (0/1 or soft)
    t          = hard argmax p | soft softmax(zw / T)           pseudo_label (Dash: soft until rho_t hits its floor)
    k          = max rank of yhat in zs over the global batch   FullMatch's adaptive k (only with EML/ANL)
    L = w_sup CE_tsa(zl, y) + w_unsup ramp(t) L_u(zs, t, w)     consistency: ce | mse (on probs) | kl
        + w_fairness L_f (FreeMatch) + on(step) [w_anl ANL(zw, zs, k) + w_eml EML(zw, zs, k, selected(w))]

Every preset (fixmatch, flexmatch, fullmatch, fullflex, freematch, softmatch, adamatch, dash, uda, pseudolabel,
meanteacher, pimodel) is a config class of this one step: defaults of these blocks, nothing else. EML/ANL are
terms any preset can carry (`loss_weights: {eml: 1, anl: 1}`); EML's selected set is `threshold.selected(w)`:
the 0/1 mask, or for SoftMatch's continuous weights the samples at weight 1 (confidence >= mu_t); for Dash the
mask loss <= rho_t (components/threshold.py).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ssl_kd.components import THRESHOLD, global_adaptive_k, ramp
from ssl_kd.components.bn import frozen_bn_stats
from ssl_kd.components.dist_align import DIST_ALIGN
from ssl_kd.components.threshold import WeakView
from ssl_kd.config.schema import EMAConfig, EvalConfig, OptimizerConfig, SchedulerConfig, StageConfig
from ssl_kd.data.hashing import hash_keys, mix_seed
from ssl_kd.engine import Plot, Stage, register_stage
from ssl_kd.losses import accuracy
from ssl_kd.losses.ssl import anl_loss, consistency_loss, eml_loss, tsa_threshold, weighted_consistency
from ssl_kd.stages._common import unlabelled_pool


class SemiSupervisedConfig(StageConfig):
    """Defaults reproduce TorchSSL/USB classic_cv on CIFAR-10 (TorchSSL@f26e1d4
    config/fixmatch/fixmatch_cifar10_*_0.yaml, USB@1ef4cbe config/classic_cv); paper settings in configs/."""

    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"sup": 1.0, "unsup": 1.0, "eml": 0.0, "anl": 0.0, "fairness": 0.0}
    )
    iters: int | None = Field(2**20, ge=0)
    steps_per_epoch: int | None = Field(1024, ge=1)  # USB's "epoch" of 1024 iterations (a reporting unit)
    batch_size: int = Field(64, ge=1)  # labelled, global
    uratio: int = Field(7, ge=1)  # mu: unlabelled batch = uratio * batch_size
    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "fixed"})  # {type: fixed | flex | ..., tau, ...}
    dist_align: DIST_ALIGN.annotation() = DIST_ALIGN.field({"type": "none"})  # none | uniform | labelled
    pseudo_label: Literal["hard", "soft"] = "hard"  # the references use hard labels
    soft_temperature: float = Field(0.5, gt=0)  # T for soft pseudo-labels (unused with hard labels)
    # pseudo-labels from the aligned probabilities (AdaMatch, UDA) or from the raw logits (SoftMatch)
    pseudo_label_from: Literal["aligned", "logits"] = "aligned"
    consistency: Literal["ce", "mse", "kl"] = "ce"  # mse: on probabilities (Pi-model, Mean Teacher)
    views: Literal["weak_strong", "weak_weak", "weak"] = "weak_strong"  # weak: Pseudo-Label (one unlabelled view)
    teacher: Literal["model", "ema"] = "model"  # ema: the first view through the EMA weights (Mean Teacher)
    freeze_bn_unlabeled: bool = False  # unlabelled passes leave BN running stats alone (USB's bn_controller)
    tsa: Literal["none", "linear", "exp", "log"] = "none"  # UDA's training-signal annealing of the supervised CE
    unsup_warmup: float = Field(0.0, ge=0, le=1)  # L_u ramps linearly over this fraction of the stage (USB 0.4)
    use_cat: bool = True  # one forward over [lb; weak; strong]; False: separate passes, weak under no_grad
    # AdaMatch's random logit interpolation: labelled logits = l * joint + (1 - l) * labelled-only pass, l ~ U[0, 1)
    # per logit (Berthelot et al., ICLR 2022; not in USB 0.3.2, so off in the `adamatch` preset)
    logit_interpolation: bool = False
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
        """`tau` and `flex_warmup` were keys of the stage; they are options of the threshold block now. A block that
        names no policy gets this preset's (so a bad key is reported with that policy's valid keys)."""
        data, notes = super().migrate(data)
        for key, registry in (("threshold", THRESHOLD), ("dist_align", DIST_ALIGN)):
            block = data.get(key)
            if isinstance(block, dict) and registry.key not in block:
                default = cls.model_fields[key].get_default(call_default_factory=True)
                data[key] = {registry.key: default.policy_name(), **block}
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
        return {"threshold", "dist_align"}

    @model_validator(mode="after")
    def _consistent(self) -> SemiSupervisedConfig:
        if self.teacher == "ema" and not self.ema.enabled:
            raise ValueError("teacher: ema reads the EMA model; set ema: {enabled: true}")
        if self.use_cat and (self.teacher == "ema" or self.freeze_bn_unlabeled):
            raise ValueError("teacher: ema and freeze_bn_unlabeled need separate passes; set use_cat: false")
        if self.logit_interpolation and not self.use_cat:
            raise ValueError("logit_interpolation blends the joint pass's labelled logits; it needs use_cat: true")
        if self.loss_weights.get("fairness") and self.threshold.policy_name() != "freematch":
            raise ValueError(
                f"loss_weights.fairness is FreeMatch's term; it needs threshold: freematch "
                f"(got {self.threshold.policy_name()!r})"
            )
        return self

    def plan_notes(self) -> list[str]:
        """How EML's selected set is taken under this threshold policy (printed by --dry-run)."""
        if not (self.loss_weights.get("eml") or self.loss_weights.get("anl")):
            return []
        rule = {
            "softmatch": "samples of weight 1 (confidence >= mu_t); L_u keeps the soft weights",
            "dash": "the Dash mask (weak-view loss <= rho_t)",
            "none": "every sample",
        }.get(self.threshold.policy_name(), "the 0/1 mask")
        return [f"EML selected set: {rule}; ANL: every sample"]


class FlexMatchConfig(SemiSupervisedConfig):
    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "flex"})


class FullMatchConfig(SemiSupervisedConfig):
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"sup": 1.0, "unsup": 1.0, "eml": 1.0, "anl": 1.0, "fairness": 0.0}
    )


class FullFlexConfig(FullMatchConfig):
    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "flex"})


# USB's algorithms. Defaults: semilearn 0.3.2 (USB@1ef4cbe) semilearn/algorithms/<name>/<name>.py `get_argument`,
# overridden where USB's config/classic_cv/<name>/<name>_cifar10_40_0.yaml sets a key (its YAML wins over argparse).


def _weights(**terms: float) -> Any:
    return Field(default_factory=lambda: {"sup": 1.0, "unsup": 1.0, "eml": 0.0, "anl": 0.0, "fairness": 0.0, **terms})


class FreeMatchConfig(SemiSupervisedConfig):
    """FreeMatch: self-adaptive thresholds + fairness term; ent_loss_ratio 0.001 (classic_cv YAML; code: 0.01)."""

    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "freematch"})
    loss_weights: dict[str, float] = _weights(fairness=0.001)


class SoftMatchConfig(SemiSupervisedConfig):
    """SoftMatch: truncated-Gaussian weights on uniformly aligned probabilities; hard labels from the raw logits."""

    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "softmatch"})
    dist_align: DIST_ALIGN.annotation() = DIST_ALIGN.field({"type": "uniform"})
    pseudo_label_from: Literal["aligned", "logits"] = "logits"


class AdaMatchConfig(SemiSupervisedConfig):
    """AdaMatch as USB codes it: relative threshold 0.95 and labelled-target alignment; hard labels from the aligned
    probabilities. USB 0.3.2 has no random logit interpolation (one forward over the concatenation)."""

    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "adamatch"})
    dist_align: DIST_ALIGN.annotation() = DIST_ALIGN.field({"type": "labelled"})


class DashConfig(SemiSupervisedConfig):
    """Dash: loss threshold rho_t (gamma 1.27, C 1.0001, rho_min 0.05, 2048 warm-up steps), soft labels T 0.5."""

    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "dash"})
    pseudo_label: Literal["hard", "soft"] = "soft"


class UDAConfig(SemiSupervisedConfig):
    """UDA: confidence mask 0.8, soft pseudo-labels, TSA `none` (classic_cv). USB's UDA takes the pseudo-label as
    the probabilities themselves (its `T: 0.4` is read but not applied: gen_ulb_targets(softmax=False)), which is
    soft_temperature 1.0 here; set 0.4 for the paper's sharpening."""

    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "fixed", "tau": 0.8})
    pseudo_label: Literal["hard", "soft"] = "soft"
    soft_temperature: float = Field(1.0, gt=0)


class _ClassicConfig(SemiSupervisedConfig):
    """The classic baselines: separate passes with BN statistics from the labelled pass only, mu = 1, and L_u
    ramped linearly over the first 40 % of training (USB's unsup_warm_up 0.4)."""

    uratio: int = Field(1, ge=1)
    use_cat: bool = False
    freeze_bn_unlabeled: bool = True
    unsup_warmup: float = Field(0.4, ge=0, le=1)


class PseudoLabelConfig(_ClassicConfig):
    """Pseudo-Label: one weak view; CE against its own confident (0.95) argmax."""

    views: Literal["weak_strong", "weak_weak", "weak"] = "weak"


class PiModelConfig(_ClassicConfig):
    """Pi-model: two weak views, MSE between their probabilities on every sample, weight 10."""

    views: Literal["weak_strong", "weak_weak", "weak"] = "weak_weak"
    threshold: THRESHOLD.annotation() = THRESHOLD.field({"type": "none"})
    consistency: Literal["ce", "mse", "kl"] = "mse"
    pseudo_label: Literal["hard", "soft"] = "soft"
    soft_temperature: float = Field(1.0, gt=0)
    loss_weights: dict[str, float] = _weights(unsup=10.0)


class MeanTeacherConfig(PiModelConfig):
    """Mean Teacher: the Pi-model with the first view through the EMA weights (decay 0.999), weight 50."""

    teacher: Literal["model", "ema"] = "ema"
    loss_weights: dict[str, float] = _weights(unsup=50.0)


@register_stage("fixmatch")
class SemiSupervised(Stage):
    Config = SemiSupervisedConfig
    cfg: SemiSupervisedConfig
    plots = (
        Plot("pseudo_labels", {"mask": "mask rate / mean weight", "pl_acc": "pseudo-label accuracy"},
             "pseudo-labels on the unlabelled batch", "fraction"),
        Plot("adaptive_k", {"k": "k"}, "adaptive k", "k"),
        Plot("threshold", {"threshold": "threshold"}, "mean class threshold", "threshold"),
        Plot("class_thresholds", {"class_thresholds": "threshold"}, "class thresholds", "threshold", kind="bars"),
        Plot("self_adaptive", {"tau_t": "FreeMatch tau_t", "mu_t": "SoftMatch mu_t", "sigma_t": "SoftMatch sigma_t"},
             "self-adaptive statistics", "confidence"),
        Plot("dash_rho", {"rho": "Dash rho_t"}, "Dash loss threshold", "loss"),
    )  # fmt: skip

    def setup(self) -> None:
        c = self.cfg
        self.net = self.single("train")
        lb = self.ssl_split()[0]
        pool, ulb = unlabelled_pool(self)  # with STL-10's unlabeled split / SVHN extra when present
        weak, strong = self.transform("weak"), self.transform("strong")
        views = {"weak_strong": {"w": weak, "s": strong}, "weak_weak": {"w": weak, "s": weak}, "weak": {"w": weak}}
        self.add_stream("labeled", self.view_dataset(self.data.train, {"x": weak}, lb), c.batch_size)
        self.add_stream("unlabeled", self.view_dataset(pool, views[c.views], ulb), c.uratio * c.batch_size)
        self.build_parts(len(pool), self.data.num_classes, interpolation_seed=self.seed("logit_interpolation"))
        for name, part in (("selected_label", self.threshold), ("dist_align", self.align)):
            if hasattr(part, "state_dict"):  # "selected_label": the name FlexMatch's history has always had
                self.register_state(name, part)

    def build_parts(self, num_samples: int, num_classes: int, interpolation_seed: int = 0) -> None:
        """The step's components from the config (also what benchmarks/usb_equivalence.py drives without data)."""
        c = self.cfg
        self.interpolation_seed = interpolation_seed
        # indexed by position in the pool; FlexMatch's history is one global history over all processes
        self.threshold = THRESHOLD.build(
            c.threshold, num_samples=num_samples, num_classes=num_classes, device=self.device,
            steps_per_epoch=c.steps_per_epoch or 1024, temperature=c.soft_temperature,
        )  # fmt: skip
        self.num_classes = num_classes
        self.align = DIST_ALIGN.build(c.dist_align, num_classes=num_classes, device=self.device)
        self.aligned = c.dist_align.policy_name() != "none"
        self.needs_lb_probs = c.dist_align.policy_name() == "labelled" or c.threshold.policy_name() == "adamatch"
        w = c.loss_weights
        self.negative_terms = bool(w.get("eml") or w.get("anl"))
        self.fairness = bool(w.get("fairness"))
        self.eml_anl_on = self.schedule(ramp("step", 0.0, 1.0, c.eml_anl_start, unit="step"))  # --loss_warm

    def _forward(self, xl: torch.Tensor, u: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labelled logits, first unlabelled view's logits detached, second view's logits with gradient). With
        one unlabelled view (Pseudo-Label) the second is the first, with its gradient."""
        c = self.cfg
        net = self.model(self.net)
        two = c.views != "weak"
        if c.use_cat:
            parts = [xl, u["w"], u["s"]] if two else [xl, u["w"]]
            out = net(torch.cat(parts)).logits.split([len(x) for x in parts])
            zl, zw = out[0], out[1]
            if c.logit_interpolation:
                zl = self._interpolate(zl, xl)
            return (zl, zw.detach(), out[2]) if two else (zl, zw.detach(), zw)
        zl = net(xl).logits
        with frozen_bn_stats(net, enabled=c.freeze_bn_unlabeled):
            if c.teacher == "ema":
                teacher = self.ema(self.net).train()  # batch statistics, as USB's apply_shadow on the live model
                with torch.no_grad(), frozen_bn_stats(teacher):
                    zw = teacher(u["w"]).logits
                teacher.eval()
            elif two:
                with torch.no_grad():
                    zw = net(u["w"]).logits
            else:
                zs = net(u["w"]).logits
                return zl, zs.detach(), zs
            zs = net(u["s"]).logits
        return zl, zw, zs

    def _interpolate(self, joint: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        """AdaMatch's random logit interpolation. The labelled-only pass normalises with the labelled batch's
        statistics and leaves BN's running statistics to the joint pass. l is a hash of (stage seed, step, labelled
        image index, class): the same draws on any number of processes and after a resume."""
        net = self.model(self.net)
        with frozen_bn_stats(net):
            alone = net(xl).logits
        keys = hash_keys(mix_seed(self.interpolation_seed, self.progress.step), self._lb_idx, joint.shape[1])
        lam = ((keys >> 11).double() / float(2**52)).to(joint.dtype)  # keys < 2^63: 52 uniform bits
        return lam * joint + (1.0 - lam) * alone

    def _supervised(self, zl: torch.Tensor, yl: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.tsa == "none":
            return F.cross_entropy(zl, yl)
        # UDA's TSA as USB codes it: a labelled sample counts while its *max* probability is <= the threshold
        tsa = tsa_threshold(c.tsa, self.progress.fraction, self.num_classes)
        keep = F.softmax(zl.float(), dim=-1).max(dim=-1)[0].le(tsa).float().detach()
        return (F.cross_entropy(zl, yl, reduction="none") * keep).mean()

    def _targets(self, zw: torch.Tensor, probs: torch.Tensor, view: WeakView) -> torch.Tensor:
        """Pseudo-labels: hard (argmax) or soft (softmax(zw / T), or the aligned probabilities sharpened by T)."""
        c = self.cfg
        from_logits = not self.aligned or c.pseudo_label_from == "logits"
        yhat = probs.argmax(dim=1) if (self.aligned and from_logits) else view.yhat
        if c.pseudo_label == "hard":
            return yhat
        if from_logits:
            soft = F.softmax(zw.float() / c.soft_temperature, dim=1)
        else:
            sharp = view.probs ** (1.0 / c.soft_temperature)
            soft = sharp / sharp.sum(dim=1, keepdim=True)
        hard = self.threshold.hard_labels()  # Dash: hard labels once rho_t is at its floor
        if hard is not None:
            soft = torch.where(hard, F.one_hot(zw.argmax(dim=1), soft.shape[1]).to(soft.dtype), soft)
        return soft

    def train_step(self, batch):
        c = self.cfg
        xl, yl = batch["labeled"]["x"], batch["labeled"]["y"]
        u = batch["unlabeled"]
        self._lb_idx = batch["labeled"].get("idx")
        zl, zw, zs = self._forward(xl, u)
        losses = {"sup": self._supervised(zl, yl)}

        probs = F.softmax(zw.float(), dim=1)
        probs_lb = F.softmax(zl.detach().float(), dim=1) if self.needs_lb_probs else None
        view = WeakView(
            self.align(probs, probs_lb), zw.float(), u["idx"], probs_lb, self.progress.step, losses["sup"].detach()
        )
        mask = self.threshold.weights(view)
        target = self._targets(zw, probs, view)
        yhat = target if target.ndim == 1 else view.yhat

        if c.consistency == "ce":
            unsup = consistency_loss(zs, target, mask)
        else:
            unsup = weighted_consistency(zs, target, mask, c.consistency)
        if c.unsup_warmup > 0:  # USB: lambda_u * L_u * clip(it / (unsup_warm_up * num_train_iter), 0, 1)
            unsup = unsup * min(1.0, self.progress.step / max(1e-12, c.unsup_warmup * self.progress.total_steps))
        losses["unsup"] = unsup
        if self.fairness:
            losses.update(self.threshold.extra_losses(zs, mask))
        diagnostics = {}
        if self.negative_terms:
            k = global_adaptive_k(zw, zs)
            on = self.eml_anl_on.value
            tau = c.threshold.tau
            losses["anl"] = on * anl_loss(zw, zs, k, tau)
            losses["eml"] = on * eml_loss(zw, zs, k, self.threshold.selected(mask), tau, c.detach_eml_target)
            diagnostics["k"] = k.float()
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


@register_stage("freematch")
class FreeMatch(SemiSupervised):
    Config = FreeMatchConfig


@register_stage("softmatch")
class SoftMatch(SemiSupervised):
    Config = SoftMatchConfig


@register_stage("adamatch")
class AdaMatch(SemiSupervised):
    Config = AdaMatchConfig


@register_stage("dash")
class Dash(SemiSupervised):
    Config = DashConfig


@register_stage("uda")
class UDA(SemiSupervised):
    Config = UDAConfig


@register_stage("pseudolabel")
class PseudoLabel(SemiSupervised):
    Config = PseudoLabelConfig


@register_stage("pimodel")
class PiModel(SemiSupervised):
    Config = PiModelConfig


@register_stage("meanteacher")
class MeanTeacher(SemiSupervised):
    Config = MeanTeacherConfig
