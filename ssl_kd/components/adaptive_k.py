"""FullMatch's adaptive k for EML/ANL, agreed across processes."""

from __future__ import annotations

import torch

from ssl_kd import dist
from ssl_kd.losses.ssl import topk_rank


def global_adaptive_k(weak_logits: torch.Tensor, strong_logits: torch.Tensor, minimum: int = 2) -> torch.Tensor:
    """k = the largest rank any sample of the global batch needs (the max over every process's batch), at least
    `minimum`, as a 0-dim device tensor: the losses take it as is, so the step needs no host sync for k (the
    reference syncs up to C-1 times per step)."""
    return dist.all_reduce_max(topk_rank(weak_logits, strong_logits)).clamp_min(minimum)
