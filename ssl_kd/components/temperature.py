"""Distillation-temperature policies, chosen by config (`temperature_policy: fixed | ctkd_global | ctkd_instance |
dtd`). Each is a module `policy(student_logits, teacher_logits) -> tau` (a float, a learned scalar, or one value
per sample); a stage registers it (`register_module`), so a learned temperature is optimized with the student,
DDP-synchronised and checkpointed, and a rule-based one costs nothing.

The formulas are the pure functions of `ssl_kd.losses.temperature`; this file adds what a policy needs around them:
its options, CTKD's lambda curriculum as a scheduled scalar, and the stage's progress to read it at.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ssl_kd.components.schedule import Progress, Scheduled, ramp
from ssl_kd.losses import GlobalTemperature, InstanceTemperature, dtd_temperature
from ssl_kd.options import Strict

PolicyName = Literal["fixed", "ctkd_global", "ctkd_instance", "dtd"]


class CTKDOptions(Strict):
    """CTKD (§A4): tau = t_start + t_range * sigmoid(theta), theta trained adversarially through a GRL."""

    t_start: float = Field(1.0, gt=0)
    t_range: float = Field(20.0, gt=0)  # CTKD's `t_end`
    init: float = 1.0  # theta_0 (global) / the MLP's output bias (instance): tau_0 = 1 + 20 sigmoid(1) ~ 15.6
    lambda_max: float = Field(1.0, ge=0)  # GRL strength after the ramp
    ramp_epochs: int = Field(10, ge=0)  # cosine ramp of lambda from 0 to lambda_max (CTKD: 10)
    hidden: int = Field(256, ge=1)  # ctkd_instance: MLP width


class DTDOptions(Strict):
    """DTD (§A7): tau_x = temperature + beta * (mean_batch(w) - w_x); FLSW or CWSM weights, no gradient.

    `tau_squared`: the KD term of sample x is tau_x^2 * KL at tau_x (default, ours) or KL at tau_x alone. The only
    public port (TextBrewer's FLSW/CWSM schedulers with its `kd_ce_loss`; derivative repos default T0 = 8) applies
    the per-sample tau without the tau^2 factor; it uses the soft cross-entropy, whose gradient equals the KL's.
    That port is `tau_squared: false` with `temperature: 8`. We default to tau_x^2 with T0 = 4 because DTD is
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


class FixedTemperature(nn.Module):
    def __init__(self, tau: float) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
        return self.tau


class DTDTemperature(nn.Module):
    """Per-sample temperatures from how well the student already matches the teacher (no gradient)."""

    def __init__(self, base: float, opts: DTDOptions) -> None:
        super().__init__()
        self.base, self.opts = base, opts

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        o = self.opts
        return dtd_temperature(student_logits, teacher_logits, self.base, o.beta, o.weights, o.gamma, o.min_temperature)


class CTKDTemperature(nn.Module):
    """A learned temperature behind a gradient-reversal layer whose strength lambda follows CTKD's curriculum:
    cosine from 0 to lambda_max over `ramp_epochs`, counted from epoch 1 as the reference does."""

    def __init__(self, net: GlobalTemperature | InstanceTemperature, lam: Scheduled) -> None:
        super().__init__()
        self.net = net
        self.lam = lam

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        lam = self.lam.value
        if isinstance(self.net, InstanceTemperature):
            return self.net(teacher_logits, student_logits, lam)
        return self.net(lam)


def build_temperature(
    name: PolicyName, tau: float, num_classes: int, ctkd: CTKDOptions, dtd: DTDOptions, progress: Progress
) -> nn.Module:
    if name == "fixed":
        return FixedTemperature(tau)
    if name == "dtd":
        return DTDTemperature(tau, dtd)
    if name in ("ctkd_global", "ctkd_instance"):
        o = ctkd
        if name == "ctkd_global":
            net: GlobalTemperature | InstanceTemperature = GlobalTemperature(o.t_start, o.t_range, o.init)
        else:
            net = InstanceTemperature(num_classes, o.hidden, o.t_start, o.t_range, o.init)
        lam = ramp("cosine", 0.0, o.lambda_max, o.ramp_epochs, unit="epoch", one_based=True)
        return CTKDTemperature(net, Scheduled(lam, progress))
    raise ValueError(f"unknown temperature policy {name!r}; valid: fixed, ctkd_global, ctkd_instance, dtd")
