"""The one counter-based hash behind every seeded draw: splitmix64 (Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014; the finaliser is Stafford's Mix13), on Python ints, numpy uint64
arrays and torch int64 tensors, bit-identical in all three.

A hash instead of a generator: a draw is a pure function of (seed, counters), so it does not depend on numpy's
stream versions, on the process count, or on how far a run got (nothing to checkpoint, O(1) to resume). Users:
the stream samplers' per-sample seeds, the host views (`mix_seed`), the device augmentation's uniforms
(`mix_seeds`), the fixed subsets (`balanced_subset`, digits' test split) and CRD / SSKD's on-device draws
(`hash_keys`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: splitmix64's state increment
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # Mix13's multipliers
SEED_START = 0x243F6A8885A308D3  # the first fraction bits of pi: `mix_seed`'s starting state


def splitmix64(x: int) -> int:
    """splitmix64 of one 64-bit value (Python int, taken modulo 2**64)."""
    x = (x + GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * MIX1) & MASK64
    x = ((x ^ (x >> 27)) * MIX2) & MASK64
    return x ^ (x >> 31)


_U = {k: np.uint64(v) for k, v in {"golden": GOLDEN, "mix1": MIX1, "mix2": MIX2, "start": SEED_START}.items()}
_S30, _S27, _S31, _S1 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(1)


def splitmix64_array(x: Any) -> np.ndarray:
    """splitmix64 of every element, as uint64 (a negative int64 counts as its two's complement; products wrap)."""
    with np.errstate(over="ignore"):
        x = np.asarray(x).astype(np.uint64) + _U["golden"]
        x = (x ^ (x >> _S30)) * _U["mix1"]
        x = (x ^ (x >> _S27)) * _U["mix2"]
        return x ^ (x >> _S31)


def mix_seed(*values: int) -> int:
    """Hash integers into a seed in [0, 2**63): cheap, platform-independent, and different for any change."""
    h = SEED_START
    for v in values:
        h = splitmix64(h ^ (int(v) & MASK64))
    return h >> 1


def mix_seeds(seeds: Any, value: Any) -> np.ndarray:
    """`mix_seed(seed, value)` elementwise over arrays (broadcast) of seeds and values, as uint64."""
    seeds = np.uint64(seeds & MASK64) if isinstance(seeds, int) else np.asarray(seeds).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = splitmix64_array(_U["start"] ^ seeds)
        return splitmix64_array(h ^ np.asarray(value).astype(np.uint64)) >> _S1


# ---------------------------------------------------------------- torch: int64 carries the uint64 bits
def _signed(x: int) -> int:
    """A uint64 value as the int64 with the same bits."""
    x &= MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_T_GOLDEN, _T_MIX1, _T_MIX2 = _signed(GOLDEN), _signed(MIX1), _signed(MIX2)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> on int64 is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64_tensor(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 on int64 tensors, on their device (additions and products wrap like uint64)."""
    x = x + _T_GOLDEN
    x = (x ^ _shr(x, 30)) * _T_MIX1
    x = (x ^ _shr(x, 27)) * _T_MIX2
    return x ^ _shr(x, 31)


def hash_keys(seed: int, rows: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) int64 keys in [0, 2**63): key[b, j] = splitmix64(splitmix64(seed ^ rows[b]) ^ j) >> 1, on the device
    of `rows` with no host synchronisation."""
    base = torch.full((), _signed(seed), dtype=torch.int64, device=rows.device)  # a fill: no copy from the host
    row = splitmix64_tensor(base ^ rows.to(torch.int64))
    cols = torch.arange(n, dtype=torch.int64, device=rows.device)
    return _shr(splitmix64_tensor(row[:, None] ^ cols[None, :]), 1)
