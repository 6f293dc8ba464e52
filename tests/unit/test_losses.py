"""Losses against hand-computed values and an independent formula."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssl_kd.losses import kd_loss, soft_cross_entropy


def test_kd_loss_hand_computed():
    # teacher [0, ln 3] at tau=1 -> p_t = [1/4, 3/4]; student [0, 0] -> p_s = [1/2, 1/2]
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2)
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert math.isclose(kd_loss(s, t, 1.0).item(), expected, rel_tol=1e-6)


def test_kd_loss_temperature_squared_and_scaling():
    # tau=2 on logits 2x those above gives the same distributions, so the loss is 4x the tau=1 value
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, 2 * math.log(3.0)]])
    expected = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert math.isclose(kd_loss(s, t, 2.0).item(), expected, rel_tol=1e-6)


def test_kd_loss_matches_torch_kl_div_batchmean():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    tau = 4.0
    ref = F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), reduction="batchmean", log_target=True)
    assert torch.allclose(kd_loss(s, t, tau), ref * tau**2, atol=1e-6)


def test_kd_loss_per_sample_temperature():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    taus = torch.tensor([1.0, 2.0, 3.0, 4.0])
    each = torch.stack([kd_loss(s[i : i + 1], t[i : i + 1], float(taus[i])) for i in range(4)])
    assert torch.allclose(kd_loss(s, t, taus), each.mean(), atol=1e-6)


def test_kd_loss_zero_when_equal():
    z = torch.randn(3, 7)
    assert kd_loss(z, z.clone(), 3.0).abs().item() < 1e-6


def test_soft_cross_entropy_equals_ce_on_one_hot():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(soft_cross_entropy(z, F.one_hot(y, 4).float()), F.cross_entropy(z, y), atol=1e-6)


def test_soft_cross_entropy_hand_computed():
    z = torch.tensor([[0.0, 0.0]])
    q = torch.tensor([[0.3, 0.7]])
    assert math.isclose(soft_cross_entropy(z, q).item(), math.log(2.0), rel_tol=1e-6)
