"""ssl_kd.data.hashing: splitmix64 on ints, uint64 arrays and int64 tensors, and the seeds built on it."""

from __future__ import annotations

import numpy as np
import torch

from ssl_kd.data.hashing import (
    GOLDEN,
    MASK64,
    hash_keys,
    mix_seed,
    mix_seeds,
    splitmix64,
    splitmix64_array,
    splitmix64_tensor,
)

# The reference generator (Vigna, splitmix64.c) seeded with 0 returns splitmix64(k * GOLDEN) as its k-th output
# (k = 1, 2, ...): these are its first four outputs.
SEED0_OUTPUTS = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
INPUTS = [0, 1, 7, 2**40 + 3, 2**63 - 1, 2**63, MASK64, 0x243F6A8885A308D3]


def test_splitmix64_matches_the_reference_generator():
    assert [splitmix64(k * GOLDEN & MASK64) for k in range(4)] == SEED0_OUTPUTS
    assert splitmix64(MASK64 + 1) == splitmix64(0) != 0  # inputs are taken modulo 2**64


def test_int_array_and_tensor_versions_agree_bit_for_bit():
    want = [splitmix64(x) for x in INPUTS]
    got = splitmix64_array(np.array(INPUTS, dtype=np.uint64))
    assert got.dtype == np.uint64 and got.tolist() == want
    signed = [x - (1 << 64) if x >= 1 << 63 else x for x in INPUTS]  # the same bits as int64
    assert splitmix64_array(np.array(signed, dtype=np.int64)).tolist() == want  # two's complement, like the masks
    out = splitmix64_tensor(torch.tensor(signed, dtype=torch.int64)).tolist()
    assert [v & MASK64 for v in out] == want


def test_mix_seed_values_are_pinned():
    # the values every run's seeds derive from: changing them changes every shipped config's draws
    assert mix_seed(0) == 1610172448792072464
    assert mix_seed(1, 2) == 7199479353940798044
    assert mix_seed(2**64 - 1, -5, 7) == 5723412944107680938  # negative and 64-bit values wrap
    assert mix_seed(123456789, 0, 3) == 8384770926711199025
    assert all(0 <= mix_seed(v) < 2**63 for v in INPUTS)


def test_mix_seeds_is_mix_seed_elementwise():
    seeds = np.array([0, 11, 2**63 + 5, MASK64], dtype=np.uint64)
    assert mix_seeds(seeds, 3).tolist() == [mix_seed(int(s), 3) for s in seeds]
    values = np.arange(5, dtype=np.int64)
    assert mix_seeds(11, values).tolist() == [mix_seed(11, int(v)) for v in values]  # an int seed broadcasts
    assert mix_seeds(-3, values).tolist() == [mix_seed(-3, int(v)) for v in values]
    grid = mix_seeds(seeds[:, None], values[None, :])
    assert grid.shape == (4, 5) and grid[2, 4] == mix_seed(int(seeds[2]), 4)


def test_hash_keys_formula_and_range():
    rows = torch.tensor([0, 3, -1, 2**40])
    keys = hash_keys(mix_seed(5, 9), rows, 6)
    assert keys.shape == (4, 6) and keys.dtype == torch.int64 and keys.min() >= 0
    seed = mix_seed(5, 9)
    for b, r in enumerate(rows.tolist()):
        for j in range(6):
            assert keys[b, j].item() == splitmix64(splitmix64(seed ^ (r & MASK64)) ^ j) >> 1
