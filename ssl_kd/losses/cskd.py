"""CSKD (Zhao, Song, Liang; ICCV 2023): the CNN teacher's spatial responses distilled into every ViT patch token,
with Cumulative Knowledge Fusion (arXiv 2307.08500).

Written from the abstract, before the authors' code (Zzzzz1/CSKD@fa0d8b8) was found: patch tokens learn from the
CNN's per-position responses and a fusion weight moves the target towards the CNN's global response as training
goes on. The concrete forms below are a reading of the paper [unverified]; each alternative is a parameter:

    q_i = (1 - beta) softmax(t_i / T) + beta softmax(t_global / T)          ckf_target
    L_patch = mean_{b, i} l(s_{b,i}, q_{b,i})                               patch_distill_loss
    l = soft_ce: -T^2 sum_c q_c log softmax(s/T)_c  |  kl: T^2 KL(q || softmax(s/T))  |  hard: CE(s, argmax_c q_c)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def ckf_target(
    local_logits: torch.Tensor, global_logits: torch.Tensor, beta: float, temperature: float = 1.0
) -> torch.Tensor:
    """Cumulative Knowledge Fusion: per-position probabilities (B, C, h, w) = (1 - beta) p_local + beta p_global.

    ``local_logits`` (B, C, h, w) are the teacher's dense logits, ``global_logits`` (B, C) its pooled logits."""
    p_local = F.softmax(local_logits.float() / temperature, dim=1)
    p_global = F.softmax(global_logits.float() / temperature, dim=1)[:, :, None, None]
    return (1.0 - beta) * p_local + beta * p_global


def patch_distill_loss(
    student_dense: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 1.0,
    kind: Literal["soft_ce", "kl", "hard"] = "soft_ce",
) -> torch.Tensor:
    """Mean over images and positions of the per-patch loss between student logits (B, C, h, w) and target
    probabilities (B, C, h, w) on the same grid. soft_ce and kl differ by the target's entropy (a constant for the
    student, so the same gradient); hard uses the target's argmax (DeiT's hard distillation, per patch)."""
    if student_dense.shape != target.shape:
        raise ValueError(f"student {tuple(student_dense.shape)} and target {tuple(target.shape)} grids differ")
    if kind == "hard":
        return F.cross_entropy(student_dense.float(), target.argmax(dim=1))
    log_p = F.log_softmax(student_dense.float() / temperature, dim=1)
    per = -(target * log_p).sum(dim=1)
    if kind == "kl":
        per = per + (target * target.clamp_min(1e-12).log()).sum(dim=1)
    return per.mean() * temperature**2


def align_dense(
    student: torch.Tensor,
    teacher: torch.Tensor,
    how: Literal["pool_student", "resize_teacher"] = "pool_student",
    mode: Literal["bilinear", "nearest"] = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring the student's (B, C, hs, ws) and the teacher's (B, C, ht, wt) dense logits onto one grid.

    pool_student: adaptive-average-pool the student's logits to the teacher's grid (14x14 DeiT patches -> 7x7 CNN
    map, as the authors' code does: Zzzzz1/CSKD@fa0d8b8 cskd/cskd.py); resize_teacher: interpolate the teacher's
    logits to the student's grid. Equal grids pass through unchanged."""
    if student.shape[-2:] == teacher.shape[-2:]:
        return student, teacher
    if how == "pool_student":
        return F.adaptive_avg_pool2d(student, teacher.shape[-2:]), teacher
    align = False if mode == "bilinear" else None
    return student, F.interpolate(teacher, size=student.shape[-2:], mode=mode, align_corners=align)
