"""CSKD (Zhao, Song, Liang; ICCV 2023, arXiv 2307.08500): the CNN teacher's spatial responses distilled into every
ViT patch token, with Cumulative Knowledge Fusion (CKF). The defaults follow the authors' code, Zzzzz1/CSKD@fa0d8b8
(`cskd/cskd.py`, `CSKDLoss.get_loss_cskd`); the probability fusion and the position mean are our earlier reading of
the paper, kept as options.

With T_i the teacher's dense logits at position i, t its global logits, S_i the student's dense logits on the same
grid and beta the fusion weight (the authors' code: beta = 1 - decay(epoch / epochs)):

    z_i = (1 - beta) T_i + beta t                                        ckf_logits   (the authors' code: logits)
    q_i = (1 - beta) softmax(T_i / tau) + beta softmax(t / tau)          ckf_target   (fusion: probs)
    hard: CE(S_i, argmax_c z_i)      kl: tau^2 KL(q_i || softmax(S_i / tau))      soft_ce: kl + the target's entropy
    reduction official: hard = mean over images and positions, kl / soft_ce = sum over positions, mean over images
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ssl_kd.losses.kd import kd_loss

PatchKind = Literal["hard", "kl", "soft_ce"]
PatchReduction = Literal["official", "mean", "sum"]


def ckf_logits(local_logits: torch.Tensor, global_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Cumulative Knowledge Fusion in logit space, as the authors' code: (B, C, h, w) = (1 - beta) local + beta
    global. ``local_logits`` (B, C, h, w) are the teacher's dense logits, ``global_logits`` (B, C) its pooled ones."""
    return (1.0 - beta) * local_logits.float() + beta * global_logits.float()[:, :, None, None]


def ckf_target(
    local_logits: torch.Tensor, global_logits: torch.Tensor, beta: float, temperature: float = 1.0
) -> torch.Tensor:
    """Cumulative Knowledge Fusion in probability space (`fusion: probs`, our first reading of the paper):
    per-position probabilities (B, C, h, w) = (1 - beta) softmax(local / tau) + beta softmax(global / tau)."""
    p_local = F.softmax(local_logits.float() / temperature, dim=1)
    p_global = F.softmax(global_logits.float() / temperature, dim=1)[:, :, None, None]
    return (1.0 - beta) * p_local + beta * p_global


def patch_distill_loss(
    student_dense: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 1.0,
    kind: PatchKind = "hard",
    reduction: PatchReduction = "official",
    target_is: Literal["logits", "probs"] = "logits",
) -> torch.Tensor:
    """Per-patch loss between student logits (B, C, h, w) and a target on the same grid: fused logits
    (``target_is: logits``, from `ckf_logits`) or probabilities (from `ckf_target`).

    hard: CE against the target's argmax (DeiT's hard distillation, per patch; no temperature); kl: tau^2 KL;
    soft_ce: tau^2 soft-target CE (KL plus the target's entropy: the same gradient for the student). ``reduction``
    official = the authors' code (hard: mean over images and positions, F.cross_entropy; kl / soft_ce: summed over
    positions and classes, divided by the batch size); mean / sum = that over positions for every kind, mean over
    images."""
    if student_dense.shape != target.shape:
        raise ValueError(f"student {tuple(student_dense.shape)} and target {tuple(target.shape)} grids differ")
    s = student_dense.float()
    if kind == "hard":
        per = F.cross_entropy(s, target.argmax(dim=1), reduction="none")  # (B, h, w)
    else:
        log_s = F.log_softmax(s / temperature, dim=1)
        if target_is == "logits":
            log_q = F.log_softmax(target.float() / temperature, dim=1)
            q = log_q.exp()
        else:
            q = target.float()
            log_q = q.clamp_min(1e-12).log()
        per = -(q * log_s).sum(dim=1)
        if kind == "kl":
            per = per + (q * log_q).sum(dim=1)
        per = per * temperature**2
    if reduction == "mean" or (reduction == "official" and kind == "hard"):
        return per.mean()
    return per.sum() / per.shape[0]


def cskd_terms(
    logits: torch.Tensor,
    token_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_dense: torch.Tensor | None = None,
    teacher_dense: torch.Tensor | None = None,
    beta: float = 0.0,
    *,
    temperature: float = 1.0,
    token_kd: Literal["hard", "soft"] = "hard",
    token_reduction: Literal["elements", "batch"] = "elements",
    patch_kd: PatchKind = "hard",
    patch_reduction: PatchReduction = "official",
    fusion: Literal["logits", "probs"] = "logits",
    align: Literal["pool_student", "resize_teacher"] = "pool_student",
    resize_mode: Literal["bilinear", "nearest"] = "bilinear",
) -> dict[str, torch.Tensor]:
    """CSKD's loss terms (unweighted): ``ce`` on the class-token ``logits``, ``kd`` of ``token_logits`` (the
    distillation or class token) against the teacher's global logits, and ``patch`` when dense logits are given.
    Defaults = the authors' code (`CSKDLoss`): hard token labels; soft = tau^2 KL summed / (B * C) (``elements``) or
    / B (``batch``, Hinton's KD); the patch target fused in logit space."""
    if token_kd == "hard":
        kd = F.cross_entropy(token_logits, teacher_logits.argmax(dim=1))
    else:
        kd = kd_loss(token_logits, teacher_logits, temperature)
        kd = kd / token_logits.shape[1] if token_reduction == "elements" else kd
    terms = {"ce": F.cross_entropy(logits, labels), "kd": kd}
    if student_dense is not None and teacher_dense is not None:
        s_dense, t_dense = align_dense(student_dense, teacher_dense, align, resize_mode)
        if fusion == "logits":
            target = ckf_logits(t_dense, teacher_logits, beta)
        else:
            target = ckf_target(t_dense, teacher_logits, beta, temperature)
        terms["patch"] = patch_distill_loss(s_dense, target, temperature, patch_kd, patch_reduction, fusion)
    return terms


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
