"""PAD, Prime-Aware Adaptive Distillation (Zhang et al., ECCV 2020), as torchdistill ports it
(torchdistill/losses/mid_level.py `PADL2Loss`), and the plain feature L2 of its first phase.

    L_PAD = mean_b mean_d [ (f_t - f_s)^2 / (eps + exp(s)) + s ]      s = log sigma^2, per sample and dimension
    L_2   = mean_b mean_d (f_t - f_s)^2                                  torch's MSELoss(reduction="mean")

eps = 1e-6 as torchdistill's `PADL2Loss` default and the official config. A large predicted variance down-weights a
sample's dimension; the + s term keeps the variance from growing without bound (the paper's 1/2 factors only
rescale the loss). `reduction="sum"` sums the per-sample means over the batch, as torchdistill's other option.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

PAD_EPS = 1e-6


def pad_l2_loss(
    student: Tensor, teacher: Tensor, log_variance: Tensor, eps: float = PAD_EPS,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:  # fmt: skip
    """Uncertainty-weighted L2 between (B, d) features; `log_variance` (B, d) is the variance branch's output."""
    per_sample = torch.mean((teacher - student) ** 2 / (eps + torch.exp(log_variance)) + log_variance, dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def feature_l2_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared difference over every element (torchdistill's `MSELoss` on flattened pooled features)."""
    return torch.mean((teacher.flatten(1) - student.flatten(1)) ** 2)
