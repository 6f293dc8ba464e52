"""Distillation-temperature policies, a registered option block of the KD-family stages:

    temperature: 4                                          = {policy: fixed, tau: 4}
    temperature: {policy: dtd, tau: 4, beta: 1, tau_squared: true}
    temperature: {policy: ctkd_global, lambda_max: 1, ramp_epochs: 10}

Each policy is a module `policy(student_logits, teacher_logits) -> tau` (a float, a learned scalar, or one value per
sample) built from its own typed options; a stage registers it (`register_module`), so a learned temperature is
optimized with the student, DDP-synchronised and checkpointed, and a rule-based one costs nothing. `tau_squared`
says whether the KD term keeps Hinton's tau^2 factor under this policy.

The formulas are the pure functions of `ssl_kd.losses.temperature`; this file adds what a policy needs around them:
its options, CTKD's lambda curriculum as a scheduled scalar, and the stage's progress to read it at. A new policy is
one class with an `Options` block and one `@TEMPERATURE.register(name)` line.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ssl_kd.components.policy import PolicyOptions, PolicyRegistry
from ssl_kd.components.schedule import Progress, Scheduled, ramp
from ssl_kd.losses import GlobalTemperature, InstanceTemperature, dtd_temperature


class TemperatureOptions(PolicyOptions):
    """Keys every temperature policy has: its name and the base temperature (fixed tau; DTD's T0)."""

    policy: str = "fixed"
    tau: float = Field(4.0, gt=0)


def _number_is_fixed(value: Any) -> Any:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return {"policy": "fixed", "tau": value} if is_number else value


TEMPERATURE = PolicyRegistry("temperature policy", "policy", TemperatureOptions, shorthand=_number_is_fixed)


class CTKDOptions(TemperatureOptions):
    """CTKD (Curriculum Temperature KD, Li et al., AAAI 2023; zhengli97/CTKD@7d52522): tau = t_start + t_range *
    sigmoid(theta), theta trained adversarially through a gradient-reversal layer. `tau` is unused (learned)."""

    t_start: float = Field(1.0, gt=0)
    t_range: float = Field(20.0, gt=0)  # CTKD's `t_end`
    init: float = 1.0  # theta_0 (global) / the MLP's output bias (instance): tau_0 = 1 + 20 sigmoid(1) ~ 15.6
    lambda_max: float = Field(1.0, ge=0)  # GRL strength after the ramp
    ramp_epochs: int = Field(10, ge=0)  # cosine ramp of lambda from 0 to lambda_max (CTKD: 10)
    hidden: int = Field(256, ge=1)  # ctkd_instance: MLP width


class DTDOptions(TemperatureOptions):
    """DTD ("Preparing Lessons", Wen, Lai, Qian, arXiv 1911.07471): tau_x = tau + beta * (mean_batch(w) - w_x),
    with FLSW or CWSM weights w, no gradient.

    `tau_squared`: the KD term of sample x is tau_x^2 * KL at tau_x (default, ours) or KL at tau_x alone. The only
    public port (TextBrewer's FLSW/CWSM schedulers with its `kd_ce_loss`; derivative repos default T0 = 8) applies
    the per-sample tau without the tau^2 factor; it uses the soft cross-entropy, whose gradient equals the KL's.
    That port is `tau_squared: false` with `tau: 8`. We default to tau_x^2 with T0 = 4 because DTD is
    compared with KD at tau = 4 in the same recipe: the factor keeps each sample's gradient scale independent of
    its tau (Hinton), so the temperature only shapes the target, and the recipe's weights (CE 0.1, KD 0.9), tuned for
    tau^2-scaled KD, keep their meaning; without it the KD gradient shrinks by 1/tau_x^2 (~1/16 at T0 = 4, 1/64 at 8)
    and hard samples (lower tau) get relatively more weight.
    """

    weights: Literal["flsw", "cwsm"] = "flsw"
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(2.0, gt=0)  # FLSW exponent
    min_temperature: float = Field(0.1, gt=0)  # floor (ours): keeps tau positive for any beta
    tau_squared: bool = True  # false: the TextBrewer-derived port (no tau_x^2 factor)


@TEMPERATURE.register("fixed")
class FixedTemperature(nn.Module):
    """Hinton's KD: one fixed tau."""

    class Options(TemperatureOptions):
        policy: Literal["fixed"] = "fixed"

    tau_squared = True

    def __init__(self, opts: Options, **context: Any) -> None:
        super().__init__()
        self.tau = opts.tau

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
        return self.tau


@TEMPERATURE.register("dtd")
class DTDTemperature(nn.Module):
    """Per-sample temperatures from how well the student already matches the teacher (no gradient)."""

    class Options(DTDOptions):
        policy: Literal["dtd"] = "dtd"

    def __init__(self, opts: DTDOptions, **context: Any) -> None:
        super().__init__()
        self.base, self.opts = opts.tau, opts
        self.tau_squared = opts.tau_squared  # the TextBrewer-derived port leaves the factor out

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        o = self.opts
        return dtd_temperature(student_logits, teacher_logits, self.base, o.beta, o.weights, o.gamma, o.min_temperature)


@TEMPERATURE.register("ctkd_global")
@TEMPERATURE.register("ctkd_instance")
class CTKDTemperature(nn.Module):
    """A learned temperature behind a gradient-reversal layer whose strength lambda follows CTKD's curriculum:
    cosine from 0 to lambda_max over `ramp_epochs`, counted from epoch 1 as the reference does. `ctkd_global`: one
    temperature for the batch; `ctkd_instance`: one per sample (an MLP on both networks' logits)."""

    class Options(CTKDOptions):
        policy: Literal["ctkd_global", "ctkd_instance"] = "ctkd_global"

    tau_squared = True

    def __init__(self, opts: CTKDOptions, *, num_classes: int, progress: Progress, **context: Any) -> None:
        super().__init__()
        o = opts
        if o.policy == "ctkd_instance":
            self.net: GlobalTemperature | InstanceTemperature = InstanceTemperature(
                num_classes, o.hidden, o.t_start, o.t_range, o.init
            )
        else:
            self.net = GlobalTemperature(o.t_start, o.t_range, o.init)
        self.lam = Scheduled(ramp("cosine", 0.0, o.lambda_max, o.ramp_epochs, unit="epoch", one_based=True), progress)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        lam = self.lam.value
        if isinstance(self.net, InstanceTemperature):
            return self.net(teacher_logits, student_logits, lam)
        return self.net(lam)
