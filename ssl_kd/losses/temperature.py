"""Distillation temperatures that are not a constant: CTKD (learned, adversarial) and DTD (per-sample, rule-based).

- CTKD (Li et al., AAAI 2023; zhengli97/CTKD@7d52522 models/temp_global.py): tau = t_start + t_range *
  sigmoid(theta), with theta reached through a gradient-reversal layer scaled by lambda. The student minimises the
  KD loss; theta receives -lambda * dL/dtheta, i.e. it *ascends* the loss, so the temperature keeps the task hard.
  lambda follows a cosine curriculum from 0 to lambda_max over the first `ramp_epochs` epochs. `global`: one scalar
  theta; `instance`: a small MLP over the teacher's and the student's logits gives one theta per sample.
- DTD ("Preparing Lessons", Wen, Lai, Qian, arXiv 1911.07471; no official code, FLSW/CWSM as in airaria/TextBrewer
  src/textbrewer/schedulers.py): tau_x = T0 + beta * (mean_batch(w) - w_x), no gradient, with FLSW weights
  w = (1 - cos(z_s, z_t))^gamma or CWSM weights w = 1 / (max softmax(z_s) + 1e-3): samples the student already
  matches (small w) get a higher temperature, hard ones a lower (sharper) one.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def as_column(temperature: float | torch.Tensor) -> float | torch.Tensor:
    """A float or 0-dim tensor unchanged; a per-sample (B,) tensor as a (B, 1) column that broadcasts over classes."""
    if isinstance(temperature, torch.Tensor) and temperature.ndim > 0:
        return temperature.reshape(-1, 1)
    return temperature


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -lam (lam >= 0 turns descent into ascent)."""
    return _GradReverse.apply(x, lam)


def ctkd_lambda(epoch: int, ramp_epochs: int = 10, lambda_max: float = 1.0) -> float:
    """CTKD's cosine curriculum: lambda_e = lambda_max * (1 - cos(pi * min(e, E) / E)) / 2 for 1-based epoch e."""
    if ramp_epochs <= 0:
        return lambda_max
    e = min(max(epoch, 0), ramp_epochs)
    return lambda_max * (1.0 - math.cos(math.pi * e / ramp_epochs)) / 2.0


class GlobalTemperature(nn.Module):
    """One learnable temperature for all samples (CTKD `Global_T`); theta = 1 gives tau_0 = 1 + 20 sigma(1) ~ 15.6."""

    def __init__(self, t_start: float = 1.0, t_range: float = 20.0, init: float = 1.0) -> None:
        super().__init__()
        self.t_start, self.t_range = t_start, t_range
        self.theta = nn.Parameter(torch.tensor(float(init)))

    def forward(self, lam: float) -> torch.Tensor:
        return self.t_start + self.t_range * torch.sigmoid(grad_reverse(self.theta, lam))


class InstanceTemperature(nn.Module):
    """Per-sample temperature from an MLP over [teacher logits, student logits] (CTKD's instance-wise variant).

    The student's logits enter detached: the temperature adapts to the pair, but the adversarial gradient reaches
    only the MLP, never the student through this path. The CTKD repo does not publish this module; the shape
    (2C -> hidden -> 1, ReLU) follows the paper's description, the output bias starts at `init` like the global one.
    """

    def __init__(
        self, num_classes: int, hidden: int = 256, t_start: float = 1.0, t_range: float = 20.0, init: float = 1.0
    ) -> None:
        super().__init__()
        self.t_start, self.t_range = t_start, t_range
        self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.constant_(self.mlp[-1].bias, float(init))

    def forward(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, lam: float) -> torch.Tensor:
        theta = self.mlp(torch.cat([teacher_logits.detach(), student_logits.detach()], dim=1).float()).squeeze(1)
        return self.t_start + self.t_range * torch.sigmoid(grad_reverse(theta, lam))


@torch.no_grad()
def dtd_temperature(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    base: float,
    beta: float,
    weights: Literal["flsw", "cwsm"] = "flsw",
    gamma: float = 2.0,
    min_temperature: float = 0.1,
) -> torch.Tensor:
    """Per-sample DTD temperatures (B,): base + beta * (mean(w) - w), floored at `min_temperature`.

    The floor is ours (the paper and TextBrewer have none): with CWSM weights on many classes, beta * (mean - w)
    can exceed `base` and a non-positive temperature is meaningless.
    """
    s = student_logits.float()
    if weights == "flsw":
        w = (1.0 - F.cosine_similarity(s, teacher_logits.float(), dim=1)).clamp_min(0.0) ** gamma
    elif weights == "cwsm":
        w = 1.0 / (s.softmax(dim=1).amax(dim=1) + 1e-3)
    else:
        raise ValueError(f"unknown DTD weights {weights!r}; valid: flsw, cwsm")
    return (base + beta * (w.mean() - w)).clamp_min(min_temperature)
