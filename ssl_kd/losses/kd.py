"""Logit distillation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor,
    tau_squared: bool = True,
) -> torch.Tensor:
    """Hinton KD: tau^2 * KL(softmax(t/tau) || softmax(s/tau)), summed over classes, averaged over the batch.

    The tau^2 factor keeps the soft-target gradient scale independent of tau (Hinton et al., 2015, arXiv 1503.02531).
    `temperature` may be a float or a per-sample tensor of shape (B,) (then each sample uses its own tau).
    `tau_squared=False` drops the factor (the TextBrewer-derived DTD port; see `DTDOptions.tau_squared`).
    """
    t = temperature
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        t = t.reshape(-1, 1)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    if not tau_squared:
        return kl.mean()
    scale = t.reshape(-1) ** 2 if isinstance(t, torch.Tensor) else t * t
    return (kl * scale).mean()
