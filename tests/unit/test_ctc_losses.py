"""CTC's pieces as pure functions and components: the memory update, instance discrimination, CRD's scores, NCE
loss, Z and negatives, each against hand-computed values and a loop-based transcription of the reference
(dt-tradeoff `ctc/instance.py`, `ctc/memory.py`, `ctc/criterion.py`, `dataset/cifar100.py`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssl_kd.losses
import ssl_kd.memory
from ssl_kd.components import ClassNegatives, FixedNormaliser
from ssl_kd.data.hashing import hash_keys, splitmix64, splitmix64_tensor
from ssl_kd.losses import contrast_exp_scores, crd_nce_loss, instance_discrimination_loss, nce_normaliser
from ssl_kd.memory import MemoryBank, momentum_update


def test_public_api_names():
    assert ssl_kd.losses.instance_discrimination_loss is instance_discrimination_loss
    assert ssl_kd.memory.momentum_update is momentum_update


# ------------------------------------------------------------------------------------------------ memory update
def test_momentum_update_by_hand():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    new = momentum_update(memory, torch.tensor([0]), torch.tensor([[0.0, 2.0]]), 0.5)
    # normalize(0.5 * [1, 0] + 0.5 * [0, 1]) = [1, 1] / sqrt(2)
    assert torch.allclose(new[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.equal(new[1:], memory[1:])  # other rows unchanged
    assert torch.equal(memory[0], torch.tensor([1.0, 0.0]))  # a new tensor: the input bank is untouched
    # momentum 0.9, rows 1 and 2: 0.9 [0, 1] + 0.1 [1, 0] = [0.1, 0.9]; 0.9 [0.6, 0.8] + 0.1 [0, -1] = [0.54, 0.62]
    new = momentum_update(memory, torch.tensor([1, 2]), torch.tensor([[3.0, 0.0], [0.0, -0.5]]), 0.9)
    assert torch.allclose(new[1], torch.tensor([0.1, 0.9]) / math.hypot(0.1, 0.9))
    assert torch.allclose(new[2], torch.tensor([0.54, 0.62]) / math.hypot(0.54, 0.62))
    # momentum 0 sets the rows (the refill)
    assert torch.allclose(
        momentum_update(memory, torch.tensor([2]), torch.tensor([[0.0, -4.0]]), 0.0)[2], torch.tensor([0.0, -1.0])
    )


def test_momentum_update_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    memory, feats = torch.randn(20, 6, generator=gen), torch.randn(5, 6, generator=gen)
    idx = torch.tensor([3, 17, 0, 9, 11])
    new = momentum_update(memory, idx, feats, 0.7)
    expected = memory.clone()
    for b, i in enumerate(idx.tolist()):  # LinearAverageOp.backward, row by row
        v = feats[b] / feats[b].norm()
        row = memory[i] * 0.7 + v * 0.3
        expected[i] = row / row.pow(2).sum().sqrt()
    assert torch.allclose(new, expected, atol=1e-6)


def test_memory_bank_init_state_and_update():
    a, b = MemoryBank(50, 8, 0.9, seed=3), MemoryBank(50, 8, 0.9, seed=3)
    assert torch.equal(a.memory, b.memory)  # same seed, same bank (every rank)
    bound = 1 / math.sqrt(8 / 3)  # the references' uniform init, not normalised
    assert a.memory.abs().max() <= bound and a.memory.abs().max() > 0.9 * bound
    a.update(torch.tensor([4, 7]), torch.randn(2, 8))
    assert torch.allclose(a.memory[[4, 7]].norm(dim=1), torch.ones(2))
    assert torch.equal(a.memory[0], b.memory[0])
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.memory, b.memory)
    # padded rows of a one-pass refill are not written
    c = MemoryBank(10, 2, 0.5, seed=0)
    before = c.memory.clone()
    c.update(
        torch.tensor([1, 1]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), momentum=0.0, valid=torch.tensor([True, False])
    )
    assert torch.allclose(c.memory[1], torch.tensor([1.0, 0.0])) and torch.equal(c.memory[2:], before[2:])


# ------------------------------------------------------------------------------------- instance discrimination
def test_instance_discrimination_by_hand():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # f = [3, 4] / 5 = [0.6, 0.8]; logits = [0.6, 0.8, 1.0] / 0.5 = [1.2, 1.6, 2.0]; target row 2
    # loss = ln(e^1.2 + e^1.6 + e^2.0) - 2.0 = ln(3.3201 + 4.9530 + 7.3891) - 2 = 0.75125
    expected = -2.0 + math.log(math.exp(1.2) + math.exp(1.6) + math.exp(2.0))
    loss = instance_discrimination_loss(torch.tensor([[3.0, 4.0]]), memory, torch.tensor([2]), 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.75125, abs=1e-5)


def test_instance_discrimination_matches_a_loop_in_value_and_gradient():
    gen = torch.Generator().manual_seed(1)
    memory = F.normalize(torch.randn(30, 4, generator=gen), dim=1)
    feats = torch.randn(6, 4, generator=gen, requires_grad=True)
    idx = torch.tensor([0, 5, 29, 7, 12, 3])
    loss = instance_discrimination_loss(feats, memory, idx, 0.07)
    loss.backward()
    feats2 = feats.detach().clone().requires_grad_(True)
    total = 0.0
    for b in range(6):  # LinearAverage: v = x / |x|; out = v M^T / T; CE(out, index)
        v = feats2[b] / feats2[b].norm()
        logits = torch.stack([(v * memory[j]).sum() / 0.07 for j in range(30)])
        total = total + (torch.logsumexp(logits, 0) - logits[idx[b]])
    (total / 6).backward()
    assert loss.item() == pytest.approx((total / 6).item(), rel=1e-5)
    assert torch.allclose(feats.grad, feats2.grad, atol=1e-5)
    assert not memory.requires_grad


# ------------------------------------------------------------------------------------------------- CRD's NCE
def test_crd_nce_by_hand():
    # B = 1, K = 1, N = 2: noise K/N = 0.5; u+ = 1.0, u- = 0.5
    # -[log(1 / 1.5) + log(0.5 / 1.0)] = log 1.5 + log 2 = log 3
    loss = crd_nce_loss(torch.tensor([[1.0, 0.5]]), 2, eps=0.0)
    assert loss.item() == pytest.approx(math.log(3.0), rel=1e-6)
    # the reference's eps = 1e-7 in both denominators
    with_eps = -(math.log(1.0 / (1.5 + 1e-7)) + math.log(0.5 / (1.0 + 1e-7)))
    assert crd_nce_loss(torch.tensor([[1.0, 0.5]]), 2).item() == pytest.approx(with_eps, rel=1e-6)


def _reference_crd(v1, v2, memory_v1, memory_v2, idx, T, N):
    """ContrastMemory.forward + ContrastLoss x 2 of the reference, written out per sample and per entry:
    out_v2 = exp(M1[idx] . v2 / T), out_v1 = exp(M2[idx] . v1 / T), Z = mean * N on this (first) batch."""
    B, K1 = idx.shape
    out_v1 = torch.zeros(B, K1)
    out_v2 = torch.zeros(B, K1)
    for b in range(B):
        for k in range(K1):
            out_v2[b, k] = torch.exp((memory_v1[idx[b, k]] * v2[b]).sum() / T)
            out_v1[b, k] = torch.exp((memory_v2[idx[b, k]] * v1[b]).sum() / T)
    z1, z2 = out_v1.mean() * N, out_v2.mean() * N
    out_v1, out_v2 = out_v1 / z1, out_v2 / z2

    def contrast_loss(x):
        m, pn, eps = K1 - 1, 1.0 / N, 1e-7
        total = 0.0
        for b in range(B):
            total += math.log(x[b, 0] / (x[b, 0] + m * pn + eps))
            for k in range(1, K1):
                total += math.log((m * pn) / (x[b, k] + m * pn + eps))
        return -total / B

    return contrast_loss(out_v1) + contrast_loss(out_v2), (z1, z2)


@pytest.mark.parametrize("n,k", [(40, 15), (400, 15)])  # dense (gather from B x N) and sparse (gather rows) paths
def test_crd_matches_the_reference_loops(n, k):
    gen = torch.Generator().manual_seed(2)
    ms, mt = F.normalize(torch.randn(n, 8, generator=gen), dim=1), F.normalize(torch.randn(n, 8, generator=gen), dim=1)
    s, t = F.normalize(torch.randn(4, 8, generator=gen), dim=1), F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    idx = torch.randint(0, n, (4, k + 1), generator=gen)
    expected, (z1, z2) = _reference_crd(s, t, ms, mt, idx, 0.1, n)
    e_s, e_t = contrast_exp_scores(s, mt, idx, 0.1), contrast_exp_scores(t, ms, idx, 0.1)
    z = FixedNormaliser(n)(e_s, e_t)
    assert z[0].item() == pytest.approx(z1.item(), rel=1e-5) and z[1].item() == pytest.approx(z2.item(), rel=1e-5)
    assert nce_normaliser(e_s, n).item() == pytest.approx(z1.item(), rel=1e-5)
    loss = crd_nce_loss(e_s / z[0], n) + crd_nce_loss(e_t / z[1], n)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_normaliser_is_fixed_on_the_first_batch_and_checkpointed():
    norm = FixedNormaliser(100)
    first = norm(torch.full((2, 3), 2.0), torch.full((2, 3), 4.0)).clone()
    assert first.tolist() == [200.0, 400.0]
    assert norm(torch.full((2, 3), 9.0), torch.full((2, 3), 9.0)).tolist() == [200.0, 400.0]
    other = FixedNormaliser(100)
    other.load_state_dict(norm.state_dict())
    assert other(torch.ones(1, 1), torch.ones(1, 1)).tolist() == [200.0, 400.0]


# --------------------------------------------------------------------------------------------------- negatives
def test_torch_splitmix_is_bit_identical_to_the_uint64_one():
    xs = [0, 1, 7, 2**40 + 3, 2**63 - 1, -1, -(2**63)]
    out = splitmix64_tensor(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert [v & (2**64 - 1) for v in out] == [splitmix64(x & (2**64 - 1)) for x in xs]
    keys = hash_keys(5, torch.tensor([3, 9]), 4)
    assert keys.min() >= 0 and keys[0, 2].item() == splitmix64(splitmix64(5 ^ 3) ^ 2) >> 1


def test_negatives_follow_the_reference_rule():
    y = np.repeat(np.arange(4), 10)  # 4 classes x 10 images: 30 images of other classes per sample
    idx = torch.tensor([0, 13, 39])
    yy = torch.as_tensor(y[[0, 13, 39]])
    for k, distinct in ((20, True), (30, True), (45, False)):  # replace = K > len(other classes)
        c = ClassNegatives(y, k, seed=1)(idx, yy, step=4)
        assert c.shape == (3, k + 1) and torch.equal(c[:, 0], idx)  # mode 'exact': own index first
        for b in range(3):
            negs = c[b, 1:]
            assert (torch.as_tensor(y)[negs] != yy[b]).all()  # only other classes
            assert (len(set(negs.tolist())) == k) == distinct
        if k == 30:
            assert all(set(c[b, 1:].tolist()) == set(np.flatnonzero(y != y[i]).tolist()) for b, i in enumerate(idx))
    mixed = np.array([0] * 25 + [1] * 5)  # class 0 has 5 others (< K: with replacement), class 1 has 25
    c = ClassNegatives(mixed, 10, seed=0)(torch.tensor([0, 27]), torch.tensor([0, 1]), step=0)
    assert (c[0, 1:] >= 25).all() and len(set(c[1, 1:].tolist())) == 10 and (c[1, 1:] < 25).all()


def test_negatives_depend_on_sample_and_step_only():
    """A sample's draws do not depend on its batch (rank, micro-batch) and change with the step."""
    y = np.repeat(np.arange(5), 20)
    neg = ClassNegatives(y, 8, seed=7)
    full = neg(torch.arange(10), torch.as_tensor(y[:10]), step=3)
    half = neg(torch.arange(5, 10), torch.as_tensor(y[5:10]), step=3)
    assert torch.equal(full[5:], half)
    assert not torch.equal(neg(torch.arange(10), torch.as_tensor(y[:10]), step=4), full)


def test_negatives_are_uniform_over_other_classes():
    y = np.repeat(np.arange(3), 8)
    neg = ClassNegatives(y, 4, seed=0)
    counts = np.zeros(24)
    for step in range(600):
        np.add.at(counts, neg(torch.tensor([0]), torch.tensor([0]), step)[0, 1:].numpy(), 1)
    assert counts[:8].sum() == 0
    freq = counts[8:] / counts[8:].sum()  # 16 images, each chosen with probability 1/16 per draw
    assert np.abs(freq - 1 / 16).max() < 0.02
