"""Cross-entropy variants shared by stages."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

SmoothingConvention = Literal["uniform", "off_target"]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c q_c log softmax(z)_c, for soft targets q (mixup/cutmix, soft pseudo-labels)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def smooth_targets(soft: torch.Tensor, eps: float, convention: SmoothingConvention = "uniform") -> torch.Tensor:
    """Label smoothing of one-hot or mixed targets q (B, C), two conventions:

    uniform:    (1 - eps) q + eps / C               (Szegedy et al.; ``F.cross_entropy(label_smoothing=eps)``)
    off_target: (1 - eps) q + eps / (C - 1) (1 - q) (one-hot: 1 - eps on the class, eps / (C - 1) elsewhere;
                DynamicMLP's LabelSmoothingLoss, RecursiveMix's smooth_one_hot)

    Both are affine in q, so smoothing a lam-mix of one-hots equals mixing the smoothed one-hots: a soft CE on the
    result is lam CE(z, t(y_a)) + (1 - lam) CE(z, t(y_b)). eps = 0 returns q itself."""
    if not eps:
        return soft
    if convention == "uniform":
        return soft * (1 - eps) + eps / soft.shape[1]
    return soft * (1 - eps) + (1 - soft) * (eps / max(1, soft.shape[1] - 1))


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of a batch as a 0-dim tensor (no host sync)."""
    return (logits.argmax(dim=1) == targets).float().mean()
