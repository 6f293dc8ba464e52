"""MixSKD's loss terms (Yang et al., ECCV 2022; Self-KD-Lib main_mixskd_*.py), as one pure function.

With K exits (the backbone last), clean logits z_k = exit k on x, mixed logits z~_k = exit k on the mixup image
x~ = lam x + (1 - lam) x[perm], interpolated logits z^_k = lam z_k + (1 - lam) z_k[perm], self-teacher outputs
t^ (on the interpolated maps F^) and t~ (on the mixed image's maps F~), and KL_T(s <- t) = T^2 KL(softmax(t/T) ||
softmax(s/T)) averaged over the batch with the target t detached:

    cls = sum_k CE(z_k, y)
    mix = sum_{q in z~_1..z~_K, t^, t~} [lam CE(q, y) + (1 - lam) CE(q, y[perm])]
    div = KL_T(z^_K <- t~) + KL_T(z~_K <- t^) + sum_{k<K} [KL_T(z^_k <- z~_k) + KL_T(z~_k <- z^_k)]
    fea = sum_k mean((F^_k - F~_k)^2)          (no detach on either side, as the reference)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ssl_kd.losses.kd import kd_loss


def mixup_ce(logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lam CE(logits, y) + (1 - lam) CE(logits, y[perm]) with hard labels (Self-KD-Lib ``mixup_criterion``)."""
    logits = logits.float()
    return lam * F.cross_entropy(logits, y) + (1.0 - lam) * F.cross_entropy(logits, y[perm])


def interpolate_rows(t: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lam t + (1 - lam) t[perm]: the 'mix of the originals' of logits or maps."""
    return lam * t + (1.0 - lam) * t[perm]


def mixskd_losses(
    clean: Sequence[torch.Tensor],
    mixed: Sequence[torch.Tensor],
    teacher_hat: torch.Tensor,
    teacher_tilde: torch.Tensor,
    feats_hat: Sequence[torch.Tensor],
    feats_tilde: Sequence[torch.Tensor],
    y: torch.Tensor,
    perm: torch.Tensor,
    lam: float,
    temperature: float = 3.0,
) -> dict[str, torch.Tensor]:
    """MixSKD's `cls`, `mix`, `div` and `fea` terms (module docstring), each summed over exits with weight 1.

    clean, mixed: the K exits' logits on x and on x~ (last = backbone exit), each (B, C); teacher_hat,
    teacher_tilde: the self-teacher's logits on F^ and on F~; feats_hat: the K interpolated maps
    F^_k = lam F_k + (1 - lam) F_k[perm] (already interpolated, as the teacher read them); feats_tilde: the K maps
    of x~; y: (B,) class indices; perm, lam: the mixup's permutation (on the tensors' device: a host one is
    copied at every use, a wait for the GPU each time) and lambda.
    """
    if not (len(clean) == len(mixed) == len(feats_hat) == len(feats_tilde)) or len(clean) < 1:
        raise ValueError(
            f"mixskd_losses: clean/mixed/feats_hat/feats_tilde must list the same K >= 1 exits, got "
            f"{len(clean)}/{len(mixed)}/{len(feats_hat)}/{len(feats_tilde)}"
        )
    T = temperature
    hat = [interpolate_rows(z.float(), perm, lam) for z in clean]
    cls = sum(F.cross_entropy(z.float(), y) for z in clean)
    mix = sum(mixup_ce(q, y, perm, lam) for q in [*mixed, teacher_hat, teacher_tilde])
    div = kd_loss(hat[-1], teacher_tilde.detach(), T) + kd_loss(mixed[-1], teacher_hat.detach(), T)
    for z_hat, z_tilde in zip(hat[:-1], mixed[:-1]):
        div = div + kd_loss(z_hat, z_tilde.detach(), T) + kd_loss(z_tilde, z_hat.detach(), T)
    fea = sum(F.mse_loss(a.float(), b.float()) for a, b in zip(feats_hat, feats_tilde))
    return {"cls": cls, "mix": mix, "div": div, "fea": fea}
