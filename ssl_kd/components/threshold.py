"""Mask / weight policies of the one SSL step, a registered option block of the SSL stages:

    threshold: fixed                              = {type: fixed, tau: 0.95}     FixMatch
    threshold: {type: flex, tau: 0.95, warmup: true}                              FlexMatch
    threshold: none                                 every sample, weight 1 (Pi-model, Mean Teacher)
    threshold: {type: freematch, momentum: 0.999}   self-adaptive global x local threshold (+ fairness term)
    threshold: {type: softmatch, n_sigma: 2}        truncated-Gaussian sample weights
    threshold: {type: adamatch, tau: 0.95}          relative threshold: tau x mean labelled confidence
    threshold: {type: dash, gamma: 1.27, ...}       loss <= rho_t, rho_t = max(C gamma^-n rho^, rho_min)

A policy turns the weak view's confidence and pseudo-label into the mask of samples that enter the consistency
loss, and may learn from every step (`update`); what it learns is its checkpointed state. The FlexMatch policy
keeps one global history over all processes: `update` gathers every rank's batch, which equals 1-GPU training with
the global batch (the reference keeps one history per rank). A new policy is one class with an `Options` block and
one `@THRESHOLD.register(name)` line; it provides `weights(view)` (the per-sample weight in [0, 1] of the
consistency term, updating its own state in the order its reference does), or `thresholds` + `update` for a
plain confidence threshold, and `diagnostics` / `eval_extras`; a policy with state has `state_dict`, which the
stage registers, so a resumed run continues with the same statistics.

FreeMatch, SoftMatch, AdaMatch and Dash restate microsoft/Semi-supervised-learning (semilearn 0.3.2 on PyPI =
USB@1ef4cbe), semilearn/algorithms/{freematch,softmatch,adamatch,dash}/utils.py. Their EMA statistics are taken
over the global batch (every rank's rows gathered, as USB gathers them), so 2 processes equal 1; unlike USB they
stay on the device (SoftMatch's `.item()` per step is gone: no host sync).

EML's selected set (FullMatch's EML is defined on the pseudo-labelled samples) is `policy.selected(weights)`: the
mask itself for the 0/1 policies (fixed, flex, freematch, adamatch, and dash, whose mask is loss <= rho_t), and for
SoftMatch's continuous weights the samples of weight 1, i.e. confidence >= mu_t (the part of the Gaussian that is
not truncated: the samples SoftMatch trusts fully); the consistency term keeps the continuous weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field

from ssl_kd import dist
from ssl_kd.components.policy import PolicyOptions, PolicyRegistry
from ssl_kd.losses.ssl import (
    adamatch_mask,
    dash_rho,
    ema_,
    freematch_fairness_loss,
    freematch_mask,
    soft_ce,
    softmatch_weights,
)
from ssl_kd.memory import PseudoLabelHistory


@dataclass
class WeakView:
    """What a policy sees of the step: the weak view's probabilities (after distribution alignment), its logits,
    the unlabelled indices, the labelled batch's probabilities and the step within the stage."""

    probs: torch.Tensor  # (B, C) float32, detached
    logits: torch.Tensor  # (B, C) float32, detached (Dash's loss)
    index: torch.Tensor
    probs_lb: torch.Tensor | None = None
    step: int = 0
    sup_loss: torch.Tensor | None = None  # the labelled batch's mean CE (Dash's warm-up estimate of rho)
    conf: torch.Tensor = field(init=False)
    yhat: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.conf, self.yhat = self.probs.max(dim=1)


class ThresholdPolicy:
    """Defaults of a policy: a 0/1 mask from `thresholds`, the history `update` after it, no extra terms."""

    def weights(self, view: WeakView) -> torch.Tensor:
        mask = (view.conf >= self.thresholds(view.yhat)).float()
        self.update(view.index, view.conf, view.yhat)
        return mask

    def thresholds(self, pseudo_label: torch.Tensor) -> float | torch.Tensor:
        raise NotImplementedError

    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor) -> None:
        pass

    def selected(self, weights: torch.Tensor) -> torch.Tensor:
        """EML's selected set: the 0/1 mask itself."""
        return weights

    def hard_labels(self) -> torch.Tensor | None:
        """A 0-dim bool tensor when the policy decides between hard and soft pseudo-labels (Dash), else None."""
        return None

    def extra_losses(self, logits_s: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms the policy adds to the step (FreeMatch's `fairness`)."""
        return {}

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {}

    def eval_extras(self) -> dict[str, Any]:
        return {}


class ThresholdOptions(PolicyOptions):
    """Keys every threshold policy has: its name and the confidence threshold tau (FullMatch's EML/ANL read it too)."""

    type: str = "fixed"
    tau: float = Field(0.95, gt=0, le=1)


THRESHOLD = PolicyRegistry(
    "threshold policy", "type", ThresholdOptions, shorthand=lambda v: {"type": v} if isinstance(v, str) else v
)


@THRESHOLD.register("fixed")
class FixedThreshold(ThresholdPolicy):
    """FixMatch: one fixed tau for every class."""

    class Options(ThresholdOptions):
        type: Literal["fixed"] = "fixed"

    def __init__(self, opts: ThresholdOptions, **context: Any) -> None:
        self.tau = opts.tau

    def thresholds(self, pseudo_label: torch.Tensor) -> float:
        return self.tau


@THRESHOLD.register("none")
class NoThreshold(ThresholdPolicy):
    """Every sample with weight 1 (Pi-model, Mean Teacher). `tau` only feeds EML/ANL's tau^2 filter."""

    class Options(ThresholdOptions):
        type: Literal["none"] = "none"

    def __init__(self, opts: ThresholdOptions, **context: Any) -> None:
        pass

    def weights(self, view: WeakView) -> torch.Tensor:
        return torch.ones_like(view.conf)


@THRESHOLD.register("flex")
class FlexThreshold(ThresholdPolicy):
    """FlexMatch's curriculum: class c's threshold is tau * M(beta_c), beta from the history of confident labels.

    The per-class thresholds are computed once per step from the history as it stood before the step (TorchSSL's
    order); `update` then records the step's confident predictions (by the fixed tau) of every rank.
    """

    class Options(ThresholdOptions):
        type: Literal["flex"] = "flex"
        warmup: bool = True  # FlexMatch's threshold warm-up (unused samples count in the normaliser)

    def __init__(
        self, opts: Options, *, num_samples: int, num_classes: int, device: torch.device, **context: Any
    ) -> None:
        self.history = PseudoLabelHistory(num_samples, num_classes, opts.tau, opts.warmup, device)
        self._class_thresholds: torch.Tensor | None = None

    def thresholds(self, pseudo_label: torch.Tensor) -> torch.Tensor:
        self._class_thresholds = self.history.class_thresholds()
        return self._class_thresholds[pseudo_label]

    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor) -> None:
        self.history.update(dist.gather(index), dist.gather(confidence), dist.gather(pseudo_label))

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {"threshold": self._class_thresholds.mean()} if self._class_thresholds is not None else {}

    def eval_extras(self) -> dict[str, Any]:
        return {"class_thresholds": [round(v, 5) for v in self.history.class_thresholds().tolist()]}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.history.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.history.load_state_dict(state)


def _global(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (detached): the statistics are those of the global batch."""
    return dist.gather(t.detach())


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over ranks as the value, with n times this rank's gradient: after DDP averages the gradients
    over the n ranks, a loss built on global sums gets the gradient it has on one process with the global batch."""
    n = dist.world_size()
    if n == 1:
        return x
    every = dist.gather(x.detach()[None]).sum(dim=0)
    return n * x + (every - n * x).detach()


@THRESHOLD.register("freematch")
class FreeMatchThreshold(ThresholdPolicy):
    """FreeMatch's self-adaptive thresholding (Wang et al., ICLR 2023; USB freematch/utils.py): tau_t, the EMA of
    the mean max-confidence, times the class-wise local threshold p_model / max p_model (p_model the EMA of the
    mean probability vector); the statistics are updated first, then the mask is taken. `extra_losses` gives the
    self-adaptive fairness term (weight `loss_weights.fairness`, USB's ent_loss_ratio 0.01)."""

    class Options(ThresholdOptions):
        type: Literal["freematch"] = "freematch"
        momentum: float = Field(0.999, ge=0, lt=1)  # USB's ema_p
        use_quantile: bool = False  # tau_t from the 0.8-quantile of the confidences instead of their mean
        clip_thresh: bool = False  # clip tau_t to [0, 0.95]

    def __init__(self, opts: Options, *, num_classes: int, device: torch.device, **context: Any) -> None:
        self.opts = opts
        self.p_model = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.label_hist = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.time_p = self.p_model.mean()

    @torch.no_grad()
    def weights(self, view: WeakView) -> torch.Tensor:
        o, probs = self.opts, _global(view.probs)
        conf, yhat = probs.max(dim=-1)
        self.time_p = ema_(self.time_p, torch.quantile(conf, 0.8) if o.use_quantile else conf.mean(), o.momentum)
        if o.clip_thresh:
            self.time_p = torch.clip(self.time_p, 0.0, 0.95)
        self.p_model = ema_(self.p_model, probs.mean(dim=0), o.momentum)
        hist = torch.zeros_like(self.p_model).index_add_(0, yhat, torch.ones_like(conf))  # bincount syncs on CUDA
        self.label_hist = ema_(self.label_hist, hist / hist.sum(), o.momentum)
        return freematch_mask(view.probs, self.time_p, self.p_model)

    def extra_losses(self, logits_s: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fairness term over the global batch's selected samples (USB: each rank's own), see `_global_sum`."""
        return {
            "fairness": freematch_fairness_loss(logits_s, weights, self.p_model, self.label_hist, total=_global_sum)
        }

    def class_thresholds(self) -> torch.Tensor:
        return self.time_p * self.p_model / self.p_model.max()

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {"tau_t": self.time_p, "threshold": self.class_thresholds().mean()}

    def eval_extras(self) -> dict[str, Any]:
        return {"class_thresholds": [round(v, 5) for v in self.class_thresholds().tolist()]}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"p_model": self.p_model, "label_hist": self.label_hist, "time_p": self.time_p}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in ("p_model", "label_hist", "time_p"):
            setattr(self, k, state[k].to(self.p_model.device))


@THRESHOLD.register("softmatch")
class SoftMatchWeights(ThresholdPolicy):
    """SoftMatch's truncated-Gaussian weights (Chen et al., ICLR 2023; USB softmatch/utils.py): mu_t and var_t are
    EMAs of the mean and unbiased variance of the max-confidence (from 1/C and 1); w = 1 at or above mu_t, a
    Gaussian of width sigma_t / n_sigma below. `tau` is not used by the weights (only by EML/ANL's tau^2 filter)."""

    class Options(ThresholdOptions):
        type: Literal["softmatch"] = "softmatch"
        n_sigma: float = Field(2.0, gt=0)
        momentum: float = Field(0.999, ge=0, lt=1)  # USB's ema_p

    def __init__(self, opts: Options, *, num_classes: int, device: torch.device, **context: Any) -> None:
        self.opts = opts
        self.mu = torch.tensor(1.0 / num_classes, device=device)
        self.var = torch.tensor(1.0, device=device)
        self._selected: torch.Tensor | None = None

    @torch.no_grad()
    def weights(self, view: WeakView) -> torch.Tensor:
        conf = _global(view.probs).max(dim=-1)[0]
        self.mu = ema_(self.mu, conf.mean(), self.opts.momentum)
        self.var = ema_(self.var, conf.var(unbiased=True), self.opts.momentum)
        self._selected = (view.conf >= self.mu).float()
        return softmatch_weights(view.probs, self.mu, self.var, self.opts.n_sigma)

    def selected(self, weights: torch.Tensor) -> torch.Tensor:
        """EML's set: confidence >= mu_t (weight 1, the untruncated part)."""
        return self._selected

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {"mu_t": self.mu, "sigma_t": self.var.sqrt()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mu, "var": self.var}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mu, self.var = state["mu"].to(self.mu.device), state["var"].to(self.var.device)


@THRESHOLD.register("adamatch")
class AdaMatchThreshold(ThresholdPolicy):
    """AdaMatch's relative threshold (Berthelot et al., ICLR 2022; USB adamatch/utils.py): tau times the mean
    max-confidence of the labelled (weak) batch. The mean is over the global labelled batch (USB: each rank's
    own), so 2 processes equal 1."""

    class Options(ThresholdOptions):
        type: Literal["adamatch"] = "adamatch"

    def __init__(self, opts: Options, **context: Any) -> None:
        self.tau = opts.tau
        self._cutoff: torch.Tensor | None = None

    @torch.no_grad()
    def weights(self, view: WeakView) -> torch.Tensor:
        if view.probs_lb is None:
            raise ValueError("the adamatch threshold needs the labelled batch's probabilities")
        probs_lb = _global(view.probs_lb)
        self._cutoff = probs_lb.max(dim=-1)[0].mean() * self.tau
        return adamatch_mask(view.probs, probs_lb, self.tau)

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {"threshold": self._cutoff} if self._cutoff is not None else {}


@THRESHOLD.register("dash")
class DashThreshold(ThresholdPolicy):
    """Dash's loss-based threshold (Xu et al., ICML 2021; USB dash/utils.py): a sample enters when its weak-view
    loss against its own pseudo-label is <= rho_t = max(C gamma^-n rho^, rho_min), n = the decays so far (one
    every `update_every` steps after the warm-up, the first at its end); the pseudo-labels are soft
    (softmax(z / T)) until rho_t reaches its floor, then hard.

    rho^ is `rho_init`, or estimated in a warm-up of `warmup_iters` steps in which no unlabelled sample enters
    (mask 0, i.e. supervised training): the labelled batch's mean CE averaged over the warm-up's last
    `estimate_steps` steps. USB's `warmup()` (supervised steps on the labelled loader, then rho^ = the loss on the
    evaluation set) is never called by semilearn 0.3.2's trainer, so USB's Dash needs rho_init set by hand; the
    estimate here keeps the test set out of training. EML's selected set is the mask (loss <= rho_t)."""

    class Options(ThresholdOptions):
        type: Literal["dash"] = "dash"
        gamma: float = Field(1.27, gt=1)
        C: float = Field(1.0001, gt=0)
        rho_min: float = Field(0.05, ge=0)
        rho_init: float | None = Field(None, gt=0)  # None: estimated in the warm-up
        warmup_iters: int = Field(2048, ge=0)  # USB's num_wu_iter
        estimate_steps: int = Field(100, ge=1)
        update_every: int | None = Field(None, ge=1)  # None: 10 epochs (USB: 10 * num_iter_per_epoch)

    def __init__(
        self, opts: Options, *, device: torch.device, steps_per_epoch: int = 1024, temperature: float = 0.5,
        **context: Any,
    ) -> None:  # fmt: skip
        if opts.rho_init is None and opts.warmup_iters == 0:
            raise ValueError("threshold: dash needs rho_init or warmup_iters > 0 to estimate it")
        self.opts, self.T = opts, temperature
        self.every = opts.update_every or 10 * steps_per_epoch
        self.warmup = 0 if opts.rho_init is not None else opts.warmup_iters
        self.window = min(opts.estimate_steps, max(1, self.warmup))
        init = float("nan") if opts.rho_init is None else opts.rho_init
        self.rho_init = torch.tensor(init, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.rho = torch.zeros((), device=device)
        self._hard = torch.zeros((), dtype=torch.bool, device=device)

    def rho_at(self, step: int) -> torch.Tensor:
        """rho_t at a step after the warm-up."""
        o = self.opts
        return dash_rho(self.rho_init, (step - self.warmup) // self.every, o.C, o.gamma, o.rho_min)

    @torch.no_grad()
    def weights(self, view: WeakView) -> torch.Tensor:
        if view.step < self.warmup:
            if view.step >= self.warmup - self.window:
                if view.sup_loss is None:
                    raise ValueError("Dash's warm-up estimate needs the labelled loss")
                self.loss_sum = self.loss_sum + dist.all_reduce_mean(view.sup_loss.detach().float())
            if view.step == self.warmup - 1:
                self.rho_init = self.loss_sum / self.window
            return torch.zeros_like(view.conf)
        self.rho = self.rho_at(view.step)
        self._hard = self.rho <= self.opts.rho_min
        soft = torch.softmax(view.logits / self.T, dim=-1)
        target = torch.where(self._hard, torch.nn.functional.one_hot(view.logits.argmax(-1), soft.shape[1]), soft)
        return soft_ce(view.logits, target).le(self.rho).float()

    def hard_labels(self) -> torch.Tensor:
        return self._hard

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {"rho": self.rho}  # 0 during the warm-up (nothing passes)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rho_init": self.rho_init, "loss_sum": self.loss_sum}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rho_init = state["rho_init"].to(self.rho_init.device)
        self.loss_sum = state["loss_sum"].to(self.loss_sum.device)
