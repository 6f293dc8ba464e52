"""The formulas of soft filter pruning and its descendants (cailinhang/PGMPF@09221a17), as pure functions.

SFP (He et al. 2018), SRFP / ASRFP ("Softer Pruning, Incremental Regularization", Cai et al. 2020) and GHFP
("Gradually Hard Filter Pruning", Cai et al. 2021) share one step, repeated at the end of every epoch: rank each
conv layer's filters by the L2 norm of their weights and mark the ⌊n·(1 − keep_ratio)⌋ smallest as pruned. They
differ in what a pruned filter becomes: zero (SFP), its weights times a decay d (SRFP), with d shrinking every epoch
(ASRFP), or, for the λ_e fraction of the pruned filters with the smallest norms, zero with its gradient zeroed too
(GHFP's "hard" filters; the rest stay soft).

The formulas follow the authors' code (cailinhang/PGMPF, on top of he-y/soft-filter-pruning); quirks that change
results are kept and marked "reference:".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

DECAY_FLOOR = 1e-4  # reference: `do_mask` treats |d| < 1e-4 as 0 (a pruned filter is then really zeroed)


def filter_norms(weight: Tensor) -> Tensor:
    """L2 norm of each output filter of a conv weight (out, in, kh, kw) over (in, kh, kw), in float64."""
    return weight.detach().reshape(weight.shape[0], -1).double().norm(p=2, dim=1)


def pruned_count(n: int, keep_ratio: float) -> int:
    """Filters to prune in a layer of n: reference `int(n * (1 - rate))`, in Python floats (so e.g. n = 10,
    keep 0.9 prunes int(0.9999999999999998) = 0 filters, as the reference does)."""
    return int(n * (1 - keep_ratio))


def _order(norms: Tensor) -> Tensor:
    """Filter indices by ascending norm; ties broken by index (the reference's numpy quicksort leaves them
    unspecified, which only matters for equal norms, e.g. several all-zero filters)."""
    return torch.argsort(norms, stable=True)


def filter_norm_mask(weight: Tensor, keep_ratio: float) -> Tensor:
    """True for the filters kept: all but the ⌊n·(1 − keep_ratio)⌋ with the smallest L2 norm over (in, kh, kw)."""
    n = weight.shape[0]
    kept = torch.ones(n, dtype=torch.bool, device=weight.device)
    kept[_order(filter_norms(weight))[: pruned_count(n, keep_ratio)]] = False
    return kept


def ghfp_masks(weight: Tensor, keep_ratio: float, hard_fraction: float) -> tuple[Tensor, Tensor]:
    """(kept, hard): the SFP selection, and among the pruned filters the hard ones, i.e. the
    ⌊n·(1 − keep_ratio)·λ⌋ with the smallest norms. Reference: the product is floored once (not ⌊n(1 − r)⌋·λ)."""
    n = weight.shape[0]
    order = _order(filter_norms(weight))
    kept = torch.ones(n, dtype=torch.bool, device=weight.device)
    kept[order[: pruned_count(n, keep_ratio)]] = False
    hard = torch.zeros(n, dtype=torch.bool, device=weight.device)
    hard[order[: int(n * (1 - keep_ratio) * hard_fraction)]] = True
    return kept, hard


def global_masks(
    weights: Sequence[Tensor], keep_ratio: float, hard_fraction: float = 0.0
) -> tuple[list[Tensor], list[Tensor]]:
    """One keep ratio over all layers together: the ⌊N·(1 − keep_ratio)⌋ filters of smallest norm among all N are
    pruned (every layer keeps at least its largest filter); in each layer the ⌊p·λ⌋ smallest of its p pruned
    filters are hard. Norms of different layers are compared as they are (no per-layer normalisation)."""
    norms = [filter_norms(w) for w in weights]
    flat = torch.cat([n.cpu() for n in norms])
    owner = [i for i, n in enumerate(norms) for _ in range(len(n))]  # layer of each filter
    drop = torch.zeros(len(flat), dtype=torch.bool)
    budget = pruned_count(len(flat), keep_ratio)
    left = [len(n) for n in norms]
    for idx in _order(flat).tolist():
        if budget == 0:
            break
        if left[owner[idx]] > 1:  # never empty a layer
            drop[idx], budget = True, budget - 1
            left[owner[idx]] -= 1
    kept_all, hard_all, start = [], [], 0
    for w, n in zip(weights, norms):
        pruned = drop[start : start + len(n)].to(w.device)
        start += len(n)
        order = _order(n)
        pruned_sorted = order[pruned[order]]  # this layer's pruned filters, smallest norm first
        hard = torch.zeros(len(n), dtype=torch.bool, device=w.device)
        hard[pruned_sorted[: int(len(pruned_sorted) * hard_fraction)]] = True
        kept_all.append(~pruned)
        hard_all.append(hard)
    return kept_all, hard_all


def ghfp_hard_fraction(epoch: int, total_epochs: int) -> float:
    """GHFP's λ_e = 1 − (1 − (e + 1)/E)³: the fraction of the pruned filters that are hard after epoch e (0-based),
    a cubic ramp from ≈ 3/E to 1. Reference: E + 1e-7 in the denominator (a guard, no effect) is dropped."""
    return 1.0 - (1.0 - (epoch + 1) / total_epochs) ** 3


def ghfp_hard_fraction_cosine(epoch: int, total_epochs: int, full_from: float = 0.9) -> float:
    """The cosine alternative of the reference: (1 − cos(π e / (full_from·E)))/2, and 1 from e ≥ full_from·E."""
    length = full_from * total_epochs
    if epoch >= length:
        return 1.0
    return (1.0 - math.cos(math.pi * epoch / length)) / 2.0


def asrfp_decay(epoch: int, total_epochs: int, d0: float, sigma: float) -> float:
    """ASRFP's decay of the pruned filters after epoch e: d_e = d0·exp(−a·e), a = −ln(σ/(d0 + 0.01σ))/E, so that
    d_E ≈ σ; 0 once it falls below 1e-4 (the reference's `do_mask` threshold)."""
    a = -math.log(sigma / (d0 + 0.01 * sigma)) / total_epochs
    d = d0 * math.exp(-a * epoch)
    return d if d >= DECAY_FLOOR else 0.0


def asfp_keep_ratio(epoch: int, total_epochs: int, keep_ratio: float, shape: str = "exp", end: float = 0.9) -> float:
    """PGMPF's asymptotic keep rate (`is_asfp`, the `comp_rate` of the mask step after epoch e, 0-based): `exp`
    r + (1 − r)·exp(−k·e), k = ln 4 / (E/8) (1 at e = 0, a quarter of the pruned share left at E/8; the script's
    `exp_or_poly = 'exp'`), or `poly` 1 − (1 − r)·(1 − (1 − (e+1)/E)³); r itself from e ≥ end·E (reference 0.9).
    In float64 NumPy as the reference, so ⌊n·(1 − rate)⌋ floors the same numbers; the cubic keeps the reference's
    E + 1e-7 (it moves the rate by ~1e-8, enough to change a floored count, e.g. n = 20 at E = 4, e = 1)."""
    if epoch >= end * total_epochs:
        return keep_ratio
    if shape == "exp":
        k = np.log(4) / (1 / 8 * total_epochs)
        return float(keep_ratio + (1 - keep_ratio) * np.exp(-k * epoch))
    return float(1.0 - (1 - keep_ratio) * (1.0 - (1.0 - (epoch + 1.0) / (total_epochs + 1e-7)) ** 3))


def mask_factors(kept: Tensor, hard: Tensor, decay: float) -> Tensor:
    """Per-filter multiplier of one mask step: 1 for a kept filter, d for a soft-pruned one, 0 for a hard one;
    every pruned filter gets 0 when d < 1e-4. Reference `do_mask`: W ← W·(mat + d·(1 − mat)·mat_hard)."""
    f = kept.to(torch.float64)
    if decay >= DECAY_FLOOR:
        f = f + decay * (~kept & ~hard).to(torch.float64)
    return f


def bn_factors(kept: Tensor, decay: float) -> Tensor:
    """Per-channel multiplier of the BN weight and bias after a pruned conv: 1 kept, d pruned. Reference: the BN of
    a hard-pruned channel is scaled by d as well (not zeroed), and `do_mask`'s 1e-4 threshold is not applied here
    (ASRFP's d is already 0 below it, see `asrfp_decay`)."""
    return kept.to(torch.float64) + decay * (~kept).to(torch.float64)
