"""CRD's two stateful pieces as components: which memory rows each sample is contrasted with (its own row and K
rows of other classes), and the normaliser Z fixed on the first batch (CRD, Tian et al., ICLR 2020, as CTC runs it:
DTennant/dt-tradeoff@a36516be ctc/memory.py, ctc/criterion.py).

Negatives are a pure function of (seed, step, dataset index): the draws for a sample do not depend on which rank or
micro-batch holds it, so 2 processes draw what 1 process draws, and a resumed run draws what the uninterrupted run
drew, with no generator state to checkpoint. The draw is a counter-based hash (`ssl_kd.data.hashing.hash_keys`,
splitmix64 as the data sampler's seeds) evaluated on the device, with no host synchronisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ssl_kd import dist
from ssl_kd.data.hashing import hash_keys, mix_seed


class ClassNegatives:
    """CRD's contrast indices (mode 'exact'): for each sample, its own index (the positive) then K indices drawn
    uniformly from the training images of other classes.

    As the reference (`np.random.choice(cls_negative[y], K, replace=K > len(cls_negative[y]))`): without
    replacement when the other classes hold at least K images, else with replacement. Without replacement, the K
    rows with the largest hash keys among the other classes are taken (a uniform K-subset); with replacement, K
    uniform positions in the other classes' list.
    """

    def __init__(self, targets: np.ndarray, k: int, seed: int, device: torch.device | str = "cpu") -> None:
        if k < 1:
            raise ValueError(f"the number of negatives must be >= 1, got {k}")
        targets = np.array(targets, dtype=np.int64)  # a copy: the dataset's labels may be a read-only map
        if (targets < 0).any():
            raise ValueError("contrastive negatives need a label for every training image")
        self.k, self.seed, self.n = int(k), int(seed), len(targets)
        num_classes = int(targets.max()) + 1
        counts = np.bincount(targets, minlength=num_classes)
        order = np.argsort(targets, kind="stable")  # the images grouped by class
        self.targets = torch.as_tensor(targets, device=device)
        self.counts = torch.as_tensor(counts, device=device)
        self.start = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]), device=device)
        self.by_class = torch.as_tensor(order, device=device)
        others = self.n - counts[counts > 0]
        if (others < 1).any():
            raise ValueError("contrastive negatives need at least two classes among the training images")
        self.any_replace = bool((others < self.k).any())  # some class has fewer than K images of other classes
        self.all_replace = bool((others < self.k).all()) or self.k > self.n
        self.replace = torch.as_tensor(self.n - counts < self.k, device=device)

    def __call__(self, idx: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """(B, K+1) int64: column 0 = `idx`, then K negatives; draws keyed by (seed, step, idx)."""
        base = mix_seed(self.seed, step)
        keys = hash_keys(base, idx, max(self.n, self.k))
        parts = []
        if not self.all_replace:
            same = self.targets[None, :] == y[:, None]
            parts.append(keys[:, : self.n].masked_fill(same, -1).topk(self.k, dim=1).indices)
        if self.any_replace:
            other = self.n - self.counts[y]  # (B,)
            r = keys[:, : self.k] % other[:, None]  # K uniform positions among the other classes
            start, count = self.start[y][:, None], self.counts[y][:, None]
            pos = r + (r >= start) * count  # skip the sample's own class block
            with_repl = self.by_class[pos]
            parts.append(with_repl if self.all_replace else torch.where(self.replace[y][:, None], with_repl, parts[0]))
        return torch.cat([idx[:, None].to(torch.int64), parts[-1]], dim=1)


class FixedNormaliser:
    """Z for each view, set on the first batch as mean(exp scores) * N (the global batch: the mean over ranks of
    equal shards) and constant afterwards; checkpointed with the stage."""

    def __init__(self, num_data: int, views: int = 2) -> None:
        self.num_data = num_data
        self.z = torch.full((views,), -1.0)
        self.fixed = False

    def __call__(self, *exp_scores: torch.Tensor) -> torch.Tensor:
        if not self.fixed:
            means = torch.stack([s.detach().float().mean() for s in exp_scores])
            self.z = dist.all_reduce_mean(means) * self.num_data
            self.fixed = True
        if self.z.device != exp_scores[0].device:  # once, after a resume (a copy per step would sync)
            self.z = self.z.to(exp_scores[0].device)
        return self.z

    def state_dict(self) -> dict[str, Any]:
        return {"z": self.z, "fixed": self.fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.z, self.fixed = state["z"], bool(state["fixed"])
