"""Cross-entropy variants shared by stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c q_c log softmax(z)_c, for soft targets q (mixup/cutmix, soft pseudo-labels)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of a batch as a 0-dim tensor (no host sync)."""
    return (logits.argmax(dim=1) == targets).float().mean()
