"""FullMatch's adaptive k for EML/ANL, agreed across processes."""

from __future__ import annotations

import torch

from ssl_kd import dist
from ssl_kd.losses.ssl import topk_rank


def global_adaptive_k(weak_logits: torch.Tensor, strong_logits: torch.Tensor, minimum: int = 2) -> int:
    """k = the largest rank any sample of the global batch needs (the max over every process's batch), at least
    `minimum`. One host sync per step (the losses take k as a Python int), instead of the reference's up to C-1."""
    return max(minimum, int(dist.all_reduce_max(topk_rank(weak_logits, strong_logits)).item()))
