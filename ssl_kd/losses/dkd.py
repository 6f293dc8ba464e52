"""Decoupled KD (DKD, CVPR'22): KL(teacher || student) split into a target-class and a non-target-class part.

KL(p_t || p_s) = KL(b_t || b_s) + (1 - p_t,y) * KL(p^_t || p^_s), with b = [p_y, 1 - p_y] and p^ the softmax over
the classes other than y. DKD drops the (1 - p_t,y) coupling and weights the parts: alpha * TCKD + beta * NCKD
(Zhao et al., CVPR 2022; megvii-research/mdistiller@a08d46f mdistiller/distillers/DKD.py). Computed in log space,
so a confident teacher (p_y -> 1) gives no log(0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_kd.losses.temperature import as_column


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def dkd_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float | torch.Tensor,
    tau_squared: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD): each tau^2 * KL, summed over its classes and averaged over the batch.

    `temperature` is a float or a per-sample (B,) tensor (then sample i uses tau_i and tau_i^2);
    `tau_squared=False` leaves the factor out.
    """
    t = as_column(temperature)
    target = target.reshape(-1).long()
    zs, zt = student_logits.float() / t, teacher_logits.float() / t
    c = zs.shape[1]
    # the non-target classes of each row in class order: column j < y is j, column j >= y is j + 1 (a gather of
    # fixed shape, not boolean-mask indexing, whose value-dependent size makes the host wait for the GPU)
    cols = torch.arange(c - 1, device=zs.device).expand(len(target), c - 1)
    other_cols = cols + (cols >= target[:, None]).long()

    def parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        others = z.gather(1, other_cols)  # exact exclusion of the target class (no -1000 trick)
        log_all, log_others = z.logsumexp(dim=1), others.logsumexp(dim=1)
        log_target = z.gather(1, target[:, None]).squeeze(1)
        log_binary = torch.stack([log_target - log_all, log_others - log_all], dim=1)  # log [p_y, 1 - p_y]
        return log_binary, F.log_softmax(others, dim=1)

    bin_s, non_s = parts(zs)
    bin_t, non_t = parts(zt)
    if not tau_squared:
        return _kl_rows(bin_t, bin_s).mean(), _kl_rows(non_t, non_s).mean()
    scale = t.reshape(-1) ** 2 if isinstance(t, torch.Tensor) else t * t
    return (_kl_rows(bin_t, bin_s) * scale).mean(), (_kl_rows(non_t, non_s) * scale).mean()


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float | torch.Tensor,
    tau_squared: bool = True,
) -> torch.Tensor:
    """DKD = alpha * TCKD + beta * NCKD (tau^2 included unless `tau_squared=False`; mdistiller's warm-up factor is
    the caller's, per epoch)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, temperature, tau_squared)
    return alpha * tckd + beta * nckd
