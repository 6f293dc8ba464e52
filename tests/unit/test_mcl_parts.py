"""MCL's pieces: the supervised-contrastive and KL terms against loops and by hand, the m-per-class sampler."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_kd.data import MPerClassSampler, mix_seed
from ssl_kd.losses import ensemble_kd_loss, kl_t, mcl_losses, sup_contrastive_loss


# ------------------------------------------------------------------------------------------------ losses
def loop_sup_con(s: torch.Tensor, y: torch.Tensor) -> float:
    """The reference formula anchor by anchor: positives = same label, other column; denominator = every column
    but the anchor's own."""
    n, total = s.shape[0], 0.0
    for a in range(n):
        denom = math.log(sum(math.exp(float(s[a, k])) for k in range(n) if k != a))
        pos = [k for k in range(n) if k != a and int(y[k]) == int(y[a])]
        total += -sum(float(s[a, k]) - denom for k in pos) / len(pos)
    return total / n


def loop_kl_t(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    total = 0.0
    for r in range(s.shape[0]):
        ps = [math.exp(float(v) / temp) for v in s[r]]
        pt = [math.exp(float(v) / temp) for v in t[r]]
        zs, zt = sum(ps), sum(pt)
        total += sum((q / zt) * math.log((q / zt) / (p / zs)) for p, q in zip(ps, pt))
    return temp**2 * total / s.shape[0]


def test_sup_contrastive_hand_values():
    y = torch.tensor([0, 0, 1, 1])
    # every logit 0: each positive has probability 1/3 among the 3 other columns
    assert float(sup_contrastive_loss(torch.zeros(4, 4), y)) == pytest.approx(math.log(3))
    # positives at 1, the rest (and the excluded diagonal) at 0: -(1 - log(e + 2))
    s = torch.tensor([[5.0, 1, 0, 0], [1, 5, 0, 0], [0, 0, 5, 1], [0, 0, 1, 5]])
    assert float(sup_contrastive_loss(s, y)) == pytest.approx(math.log(math.e + 2) - 1)


def test_kl_t_hand_value():
    # T = 2: softmax([2 ln 3, 0] / 2) = [3/4, 1/4] against uniform; KL = 3/4 ln 1.5 + 1/4 ln 0.5, times T^2
    s, t = torch.zeros(1, 2), torch.tensor([[2 * math.log(3), 0.0]])
    assert float(kl_t(s, t, 2.0)) == pytest.approx(4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)))


def test_mcl_losses_match_a_loop_transcription():
    g = torch.Generator().manual_seed(0)
    n_net, b, tau, temp = 3, 10, 0.1, 3.0
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 1])
    emb = [F.normalize(torch.randn(b, 16, generator=g), dim=1) for _ in range(n_net)]
    got = mcl_losses(emb, y, tau, temp)
    sim = {(i, j): emb[i] @ emb[j].t() / tau for i in range(n_net) for j in range(n_net)}
    icl = sum(loop_sup_con(sim[i, j], y) for i in range(n_net) for j in range(n_net) if i != j)
    vcl = sum(loop_sup_con(sim[i, i], y) for i in range(n_net))
    soft_icl = sum(loop_kl_t(sim[i, j], sim[j, i], temp) for i in range(n_net) for j in range(n_net) if i != j)
    soft_vcl = sum(loop_kl_t(sim[i, i], sim[j, j], temp) for i in range(n_net) for j in range(n_net) if i != j)
    want = {"icl": icl, "vcl": vcl, "soft_icl": soft_icl, "soft_vcl": soft_vcl}
    for k, v in want.items():
        assert float(got[k]) == pytest.approx(v, rel=1e-5), k


def test_soft_terms_detach_their_targets():
    """Soft VCL pulls network 0's similarities towards network 1's: only network 0 gets a gradient from
    KL_T(S_00 || sg(S_11)); with two networks every embedding gets one from the sum (each is a student once)."""
    g = torch.Generator().manual_seed(1)
    e0, e1 = (F.normalize(torch.randn(6, 8, generator=g), dim=1).requires_grad_(True) for _ in range(2))
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    kl_t(e0 @ e0.t() / 0.1, (e1 @ e1.t() / 0.1).detach(), 3.0).backward()
    assert e1.grad is None and e0.grad.abs().sum() > 0
    e0.grad = None
    mcl_losses([e0, e1], y)["soft_icl"].backward()
    assert e0.grad.abs().sum() > 0 and e1.grad.abs().sum() > 0


def test_ensemble_kd_follows_the_reference_peer_choice():
    g = torch.Generator().manual_seed(2)
    z = [torch.randn(5, 7, generator=g) for _ in range(3)]
    mean = torch.stack(z).mean(0)
    assert float(ensemble_kd_loss(z[:2])) == pytest.approx(
        float(kl_t(z[0], torch.stack(z[:2]).mean(0), 3.0) + kl_t(z[1], torch.stack(z[:2]).mean(0), 3.0))
    )
    assert float(ensemble_kd_loss(z)) == pytest.approx(float(kl_t(z[2], mean, 3.0)))  # N > 2: the last peer only
    assert float(ensemble_kd_loss(z, all_peers=True)) == pytest.approx(sum(float(kl_t(v, mean, 3.0)) for v in z))


# ------------------------------------------------------------------------------------------------ sampler
def test_m_per_class_batches_hold_whole_classes_and_are_deterministic():
    labels = np.repeat(np.arange(10), [5, 5, 5, 5, 5, 5, 5, 5, 5, 1])  # class 9 has one image: drawn with replacement
    s = MPerClassSampler(labels, m=2, batch_size=8, seed=3)
    seen = set()
    for t in range(100):
        pos, seeds = s.batch_arrays(t)
        counts = Counter(labels[pos].tolist())
        assert len(counts) == 4 and set(counts.values()) == {2}  # batch / m distinct classes, m each
        for c in counts:
            p = pos[labels[pos] == c]
            assert len(set(p.tolist())) == (1 if c == 9 else 2)  # without replacement when the class allows
        assert seeds.tolist() == [mix_seed(3, 8 * t + i) for i in range(8)]
        seen |= set(pos.tolist())
    assert seen == set(range(len(labels)))  # every image is drawn eventually
    again = MPerClassSampler(labels, m=2, batch_size=8, seed=3, start_batch=7)
    assert next(iter(again)) == s.batch(7)  # a pure function of (seed, t): resume needs no replay
    assert MPerClassSampler(labels, m=2, batch_size=8, seed=4).batch(0) != s.batch(0)


def test_m_per_class_draws_are_uniform_subsets_without_replacement():
    """A class of 4 images, m = 3: each of the 4 subsets equally likely (the vectorised draw is uniform)."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    s = MPerClassSampler(labels, m=3, batch_size=3, seed=1)
    subsets = Counter()
    for t in range(4000):
        pos = s.global_positions(t).tolist()
        assert len(set(pos)) == 3
        if labels[pos[0]] == 0:
            subsets[tuple(sorted(pos))] += 1
    assert len(subsets) == 4
    assert all(abs(v / sum(subsets.values()) - 0.25) < 0.04 for v in subsets.values())


def test_m_per_class_process_shares_are_disjoint_and_cover_the_global_batch():
    labels = np.repeat(np.arange(20), 6)
    single = MPerClassSampler(labels, m=2, batch_size=12, seed=5)
    ranks = [MPerClassSampler(labels, m=2, batch_size=6, seed=5, rank=r, world_size=2) for r in range(2)]
    for t in range(10):
        r0, r1 = (r.batch(t) for r in ranks)
        assert r0 + r1 == single.batch(t)
        p0, p1 = ({p for p, _ in r} for r in (r0, r1))
        assert not p0 & p1 and len(p0 | p1) == 12
        for share in (r0, r1):  # each process holds whole classes: m images of each class it has
            assert set(Counter(labels[[p for p, _ in share]].tolist()).values()) == {2}
    with pytest.raises(ValueError, match="multiple of m"):
        MPerClassSampler(labels, m=4, batch_size=6, seed=0)
    with pytest.raises(ValueError, match="only 20"):
        MPerClassSampler(labels, m=2, batch_size=42, seed=0)


def test_stream_labels_of_host_and_device_datasets():
    """The sampler reads each stream position's label from either pipeline's dataset (subset indices applied)."""
    from ssl_kd.data import DeviceImages, DeviceViewDataset, ImageSet, ViewDataset, stream_labels

    images = ImageSet(np.zeros((6, 4, 4, 3), np.uint8), np.array([3, 1, 4, 1, 5, 9]))
    idx = np.array([5, 0, 2])
    assert stream_labels(ViewDataset(images, {}, idx)).tolist() == [9, 3, 4]
    assert stream_labels(DeviceViewDataset(DeviceImages(images, torch.device("cpu")), {}, idx)).tolist() == [9, 3, 4]
    assert stream_labels(DeviceViewDataset(DeviceImages(images, torch.device("cpu")), {})).tolist() == [
        3,
        1,
        4,
        1,
        5,
        9,
    ]
