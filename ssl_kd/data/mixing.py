"""Batch-level MixUp and CutMix. Randomness comes from torch's global CPU generator, which the runner
checkpoints, so a resumed run mixes exactly as the uninterrupted one would."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _soft(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    if y.ndim == 2:  # already soft / one-hot
        return y.to(dtype)
    return F.one_hot(y.long(), num_classes).to(dtype)


def _lam_and_perm(alpha: float, batch: int) -> tuple[float, torch.Tensor]:
    if alpha > 0:
        a = torch.tensor(float(alpha))
        lam = float(torch.distributions.Beta(a, a).sample())
    else:
        lam = 1.0
    return lam, torch.randperm(batch)  # CPU generator even for CUDA batches: one RNG state to checkpoint


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x' = lam x + (1-lam) x[perm], lam ~ Beta(alpha, alpha); targets mixed the same way (rows sum to 1)."""
    lam, perm = _lam_and_perm(alpha, x.shape[0])
    perm = perm.to(x.device)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    t = _soft(y, num_classes, dtype)
    return lam * x + (1.0 - lam) * x[perm], lam * t + (1.0 - lam) * t[perm]


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a box of x[perm] (area ~ 1-lam, centre uniform, clipped) into x; targets weighted by the real
    pasted area (Yun et al. 2019)."""
    lam, perm = _lam_and_perm(alpha, x.shape[0])
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    perm = perm.to(x.device)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    t = _soft(y, num_classes, dtype)
    return out, lam * t + (1.0 - lam) * t[perm]
