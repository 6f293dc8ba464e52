"""HSAKD / HSSAKD losses over rotation-augmented batches (winycg/HSAKD@28c8dc2 train_student_cifar.py,
train_online_kd_cifar.py).

All KL terms are Hinton's tau^2-scaled KL, batchmean over every row they are given (the references' `DistillKL`:
`kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean") * T^2`), i.e. `ssl_kd.losses.kd_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ssl_kd.losses.kd import kd_loss


def joint_ce(aux_logits: Sequence[torch.Tensor], joint: torch.Tensor) -> torch.Tensor:
    """sum_l CE(q_l, 4y + k): each auxiliary head classifies the joint (class, rotation) label of every row."""
    return sum((F.cross_entropy(q, joint) for q in aux_logits), torch.zeros((), device=joint.device))


def hierarchical_kd(
    student_main: torch.Tensor,
    student_aux: Sequence[torch.Tensor],
    teacher_main: torch.Tensor,
    teacher_aux: Sequence[torch.Tensor],
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HSAKD's distillation, over all 4B rows: (sum_l T^2 KL(q_l^T || q_l^S), T^2 KL(z_T || z_S)). The student's head
    l learns the teacher's head l (same depth), the main logits the teacher's main logits."""
    if len(student_aux) != len(teacher_aux):
        raise ValueError(f"head l distils from head l: {len(student_aux)} student vs {len(teacher_aux)} teacher heads")
    aux = sum(
        (kd_loss(s, t.detach(), temperature) for s, t in zip(student_aux, teacher_aux)),
        torch.zeros((), device=student_main.device),
    )
    return aux, kd_loss(student_main, teacher_main.detach(), temperature)


def mutual_kd(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Online mutual distillation of N peers: sum_i mean_{j != i} T^2 KL(z_j.detach() || z_i). For two peers this is
    HSSAKD's KL(z_1 || z_2.detach) + KL(z_2 || z_1.detach) (train_online_kd_cifar.py); for more, each peer learns
    the mean of its KL to the others (DML's convention), so the term's scale does not grow with N."""
    n = len(logits)
    if n < 2:
        raise ValueError("mutual distillation needs at least two peers")
    total = torch.zeros((), device=logits[0].device)
    for i in range(n):
        total = total + sum(kd_loss(logits[i], logits[j].detach(), temperature) for j in range(n) if j != i) / (n - 1)
    return total
