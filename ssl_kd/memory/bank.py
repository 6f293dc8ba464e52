"""Per-sample memory banks: an N x D table of L2-normalised embeddings, one row per training image (indexed by the
dataset index every batch carries), updated with momentum. This is the non-parametric memory of instance
discrimination (Wu et al. 2018) and the two contrast memories of CRD (Tian et al. 2020), as CTC uses them
(DTennant/dt-tradeoff@a36516be ctc/memory.py).

Every rank holds the same bank: `update` gathers the indices and vectors of every rank before writing, so after a
step the bank equals the bank of one process that saw the global batch. Updates are out of place (a new tensor),
so a loss that read the bank in this step keeps the rows it read for its backward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ssl_kd import dist


def momentum_update(memory: torch.Tensor, idx: torch.Tensor, features: torch.Tensor, momentum: float) -> torch.Tensor:
    """A new bank whose rows `idx` are normalize(momentum * M[idx] + (1 - momentum) * normalize(features)); every
    other row is unchanged. `momentum = 0` sets the rows to the normalised features (a refill). `idx` must hold
    distinct indices, as a training batch drawn without replacement does."""
    v = F.normalize(features.detach().to(memory.dtype), dim=1)
    rows = memory.index_select(0, idx) * momentum + v * (1.0 - momentum)
    return memory.index_copy(0, idx, F.normalize(rows, dim=1))


class MemoryBank:
    """N x D embeddings with momentum updates, checkpointed with the stage (register it with `register_state`).

    Initialised as the references do: uniform in [-1/sqrt(D/3), 1/sqrt(D/3)), not normalised (Wu et al.'s
    `LinearAverage`, CRD's `ContrastMemory`). The draw uses its own generator seeded by `seed`, so every rank builds
    the same bank without touching the global RNG.
    """

    def __init__(self, size: int, dim: int, momentum: float, seed: int, device: torch.device | str = "cpu") -> None:
        if size < 1 or dim < 1:
            raise ValueError(f"a memory bank needs size >= 1 and dim >= 1, got {size} x {dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"memory momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.device = torch.device(device)
        bound = 1.0 / math.sqrt(dim / 3)
        gen = torch.Generator().manual_seed(seed)
        self.memory = (torch.rand(size, dim, generator=gen) * (2 * bound) - bound).to(self.device)

    def __len__(self) -> int:
        return self.memory.shape[0]

    @torch.no_grad()
    def update(
        self, idx: torch.Tensor, features: torch.Tensor, momentum: float | None = None,
        valid: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        """Write this step's vectors of every rank (`momentum` None: the bank's own; 0: set the rows). `valid`
        marks the real rows of a padded batch (a sharded one-pass refill); padded rows are not written."""
        idx, features = dist.gather(idx), dist.gather(features.detach().to(self.memory.dtype))
        if valid is not None:
            keep = dist.gather(valid)
            idx, features = idx[keep], features[keep]
        m = self.momentum if momentum is None else momentum
        self.memory = momentum_update(self.memory, idx, features, m)

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        memory = state["memory"]
        if memory.shape != self.memory.shape:
            raise ValueError(f"memory bank shape {tuple(memory.shape)} != {tuple(self.memory.shape)}")
        self.memory = memory.to(self.device)
