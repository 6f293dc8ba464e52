"""KD-family losses against hand-computed values and against the reference formulas written independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.losses import (
    GlobalTemperature,
    InstanceTemperature,
    ctkd_lambda,
    dkd_loss,
    dkd_parts,
    dtd_temperature,
    grad_reverse,
    kd_loss,
    knowledge_adjust,
)

LN = math.log


# ------------------------------------------------------------------------------------------------------ DKD
def test_dkd_hand_computed():
    # tau = 1, student uniform over 3 classes, teacher [ln 2, 0, 0] -> p_t = [1/2, 1/4, 1/4]
    s = torch.zeros(2, 3)
    t = torch.tensor([[LN(2.0), 0.0, 0.0]] * 2)
    y = torch.tensor([0, 1])
    # row 0 (y=0): b_t = [1/2, 1/2], b_s = [1/3, 2/3]; non-target [1/2, 1/2] vs [1/2, 1/2] -> NCKD 0
    tckd0, nckd0 = 0.5 * LN(1.5) + 0.5 * LN(0.75), 0.0
    # row 1 (y=1): b_t = [1/4, 3/4], b_s = [1/3, 2/3]; non-target {0, 2}: [2/3, 1/3] vs [1/2, 1/2]
    tckd1 = 0.25 * LN(0.75) + 0.75 * LN(9 / 8)
    nckd1 = 2 / 3 * LN(4 / 3) + 1 / 3 * LN(2 / 3)
    tckd, nckd = dkd_parts(s, t, y, 1.0)
    assert math.isclose(tckd.item(), (tckd0 + tckd1) / 2, rel_tol=1e-5)
    assert math.isclose(nckd.item(), (nckd0 + nckd1) / 2, rel_tol=1e-5)
    expected = 1.0 * (tckd0 + tckd1) / 2 + 8.0 * (nckd0 + nckd1) / 2
    assert math.isclose(dkd_loss(s, t, y, 1.0, 8.0, 1.0).item(), expected, rel_tol=1e-5)
    # tau = 2 on doubled logits: same distributions, so tau^2 = 4 times the value
    assert math.isclose(dkd_loss(s, 2 * t, y, 1.0, 8.0, 2.0).item(), 4 * expected, rel_tol=1e-5)


def _mdistiller_style_dkd(s, t, y, alpha, beta, tau):
    """The reference construction (probability sums and the -1000 mask), written out separately."""
    tau = tau.reshape(-1, 1) if isinstance(tau, torch.Tensor) else tau
    gt = F.one_hot(y, s.shape[1]).float()
    ps, pt = F.softmax(s / tau, 1), F.softmax(t / tau, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = (bt * (bt.log() - bs.log())).sum(1)
    nt, ls = F.softmax(t / tau - 1000 * gt, 1), F.log_softmax(s / tau - 1000 * gt, 1)
    nckd = torch.xlogy(nt, nt).sum(1) - (nt * ls).sum(1)
    sq = tau.reshape(-1) ** 2 if isinstance(tau, torch.Tensor) else tau**2
    return (sq * (alpha * tckd + beta * nckd)).mean()


@pytest.mark.parametrize("per_sample", [False, True])
def test_dkd_matches_reference_formula_on_random_logits(per_sample):
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(16, 100, generator=g), 3 * torch.randn(16, 100, generator=g)
    y = torch.randint(0, 100, (16,), generator=g)
    tau = 1 + 5 * torch.rand(16, generator=g) if per_sample else 4.0
    torch.testing.assert_close(dkd_loss(s, t, y, 1.0, 8.0, tau), _mdistiller_style_dkd(s, t, y, 1.0, 8.0, tau))


def test_dkd_decomposes_kd():
    # KL = TCKD + (1 - p_t,y) NCKD: with beta = 1 - p_t,y (one sample) DKD is exactly KD
    g = torch.Generator().manual_seed(3)
    s, t, y = torch.randn(1, 10, generator=g), torch.randn(1, 10, generator=g), torch.tensor([4])
    tckd, nckd = dkd_parts(s, t, y, 2.0)
    p_ty = F.softmax(t / 2.0, 1)[0, 4]
    torch.testing.assert_close(tckd + (1 - p_ty) * nckd, kd_loss(s, t, 2.0))


def test_dkd_confident_teacher_has_finite_gradients():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.zeros(4, 10)
    t[:, 2] = 200.0  # p_t,y == 1 in float32: log(1 - p_y) would be -inf in probability space
    loss = dkd_loss(s, t, torch.full((4,), 2), 1.0, 8.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ------------------------------------------------------------------------------------------------------ KA
def test_ka_probability_shift_swaps_true_class_and_argmax():
    t = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])  # row 0 wrong (argmax 1, label 0); row 1 right
    y = torch.tensor([0, 0])
    out = knowledge_adjust(t, y, "ps")
    assert out.tolist() == [[3.0, 1.0, 2.0], [5.0, 0.0, 1.0]]
    # as probabilities: p_t[y] and p_t[argmax] exchanged at any temperature (not top-1/top-2)
    t2 = torch.tensor([[0.0, 4.0, 3.0]])
    p, q = F.softmax(t2 / 2, 1)[0], F.softmax(knowledge_adjust(t2, torch.tensor([0]), "ps") / 2, 1)[0]
    torch.testing.assert_close(q, p[[1, 0, 2]])


def test_ka_label_smoothing_target_at_the_temperature():
    t = torch.tensor([[0.0, 2.0, 1.0, 0.5], [3.0, 0.0, 0.0, 0.0]])  # row 0 wrong, row 1 right
    y = torch.tensor([2, 0])
    for tau in (1.0, 4.0, torch.tensor([2.0, 3.0])):
        out = knowledge_adjust(t, y, "lsr", tau, correct_prob=0.9)
        col = tau.reshape(-1, 1) if isinstance(tau, torch.Tensor) else tau
        q = F.softmax(out / col, 1)
        torch.testing.assert_close(q[0], torch.tensor([0.1 / 3, 0.1 / 3, 0.9, 0.1 / 3]))
        torch.testing.assert_close(out[1], t[1])  # a right teacher is left alone


# ------------------------------------------------------------------------------------------------------ DTD
def test_dtd_flsw_and_cwsm_hand_computed():
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [2.0, 0.0]])  # cos = 0 -> w = 1; cos = 1 -> w = 0; mean 0.5
    tau = dtd_temperature(s, t, base=4.0, beta=2.0, weights="flsw", gamma=2.0)
    torch.testing.assert_close(tau, torch.tensor([4.0 - 1.0, 4.0 + 1.0]))
    s = torch.tensor([[0.0, 0.0], [LN(3.0), 0.0]])  # max softmax 1/2 and 3/4
    w = torch.tensor([1 / 0.501, 1 / 0.751])
    tau = dtd_temperature(s, t, base=4.0, beta=1.0, weights="cwsm")
    torch.testing.assert_close(tau, 4.0 + (w.mean() - w))
    assert dtd_temperature(s, t, 1.0, 100.0, "cwsm", min_temperature=0.5).min().item() == 0.5  # the floor


def _port_soft_ce(s, t, tau):
    """The public DTD port's KD term, transcribed row by row: soft cross-entropy at each sample's tau, no tau^2."""
    total = 0.0
    for i in range(s.shape[0]):
        p_t = [math.exp(v / tau[i]) for v in t[i].tolist()]
        z = sum(p_t)
        log_z_s = math.log(sum(math.exp(v / tau[i]) for v in s[i].tolist()))
        total += -sum(pt / z * (v / tau[i] - log_z_s) for pt, v in zip(p_t, s[i].tolist()))
    return total / s.shape[0]


def test_dtd_without_tau_squared_is_the_ports_loss_up_to_a_constant():
    """tau_squared=False: the per-sample KL without tau_i^2. It differs from the port's soft cross-entropy only by
    the teacher's entropy (no gradient), so both give the student the same gradient; with the factor each row is
    scaled by tau_i^2."""
    torch.manual_seed(3)
    s0, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64) * 3
    tau = torch.tensor([2.0, 4.0, 8.0, 5.5, 9.0], dtype=torch.float64)
    s = s0.clone().requires_grad_(True)
    ours = kd_loss(s, t, tau, tau_squared=False)
    entropy = sum(-(F.softmax(t[i] / tau[i], 0) * F.log_softmax(t[i] / tau[i], 0)).sum().item() for i in range(5))
    assert math.isclose(ours.item() + entropy / 5, _port_soft_ce(s0, t, tau.tolist()), rel_tol=1e-9)
    (g_ours,) = torch.autograd.grad(ours, s)
    s2 = s0.clone().requires_grad_(True)
    t_col = tau.reshape(-1, 1)
    port = -(F.softmax(t / t_col, 1) * F.log_softmax(s2 / t_col, 1)).sum(1).mean()  # the port's kd_ce_loss
    (g_port,) = torch.autograd.grad(port, s2)
    torch.testing.assert_close(g_ours, g_port)
    # with the factor: each row's KL times its own tau_i^2
    rows = [F.kl_div(F.log_softmax(s0[i] / tau[i], 0), F.softmax(t[i] / tau[i], 0), reduction="sum") for i in range(5)]
    with_sq = sum(r * tau[i] ** 2 for i, r in enumerate(rows)) / 5
    torch.testing.assert_close(kd_loss(s0, t, tau), with_sq)
    torch.testing.assert_close(kd_loss(s0, t, tau, tau_squared=False), sum(rows) / 5)
    y = torch.tensor([0, 1, 2, 3, 4])
    a, b = dkd_parts(s0, t, y, tau), dkd_parts(s0, t, y, tau, tau_squared=False)
    assert a[0] > b[0] and a[1] > b[1]  # every tau_i > 1: the factor only scales up
    plain = dkd_loss(s0, t, y, 1.0, 8.0, 4.0, tau_squared=False)
    torch.testing.assert_close(plain * 16, dkd_loss(s0, t, y, 1.0, 8.0, 4.0))


# ------------------------------------------------------------------------------------------------------ CTKD
def test_ctkd_lambda_cosine_curriculum():
    assert ctkd_lambda(0) == 0.0 and ctkd_lambda(10) == 1.0 and ctkd_lambda(240) == 1.0
    assert math.isclose(ctkd_lambda(5), 0.5)
    assert math.isclose(ctkd_lambda(1), (1 - math.cos(math.pi / 10)) / 2)  # ~0.0245 in the first epoch
    assert ctkd_lambda(3, ramp_epochs=0, lambda_max=0.7) == 0.7


def test_gradient_reversal():
    x = torch.tensor([2.0], requires_grad=True)
    (3 * grad_reverse(x, 0.5)).sum().backward()
    assert x.grad.item() == -1.5


def test_ctkd_global_temperature_moves_to_increase_the_kd_loss():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), 3 * torch.randn(8, 10, generator=g)
    temp = GlobalTemperature()
    assert math.isclose(temp(1.0).item(), 1 + 20 / (1 + math.exp(-1)), rel_tol=1e-6)  # tau_0 ~ 15.6
    loss = kd_loss(s, t, temp(1.0))
    loss.backward()
    # the plain derivative of the loss w.r.t. theta (no reversal), for comparison
    theta = temp.theta.detach().clone().requires_grad_(True)
    plain = torch.autograd.grad(kd_loss(s, t, 1 + 20 * torch.sigmoid(theta)), theta)[0]
    torch.testing.assert_close(temp.theta.grad, -plain)
    before = loss.item()
    with torch.no_grad():
        temp.theta -= 0.5 * temp.theta.grad  # an SGD step on the total loss ascends the KD loss in tau
        after = kd_loss(s, t, temp(1.0)).item()
    assert after > before


def test_ctkd_instance_temperature_per_sample_and_reversed():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 10, generator=g, requires_grad=True)
    t = torch.randn(6, 10, generator=g)
    net = InstanceTemperature(10, hidden=16)
    tau = net(t, s, 1.0)
    assert tau.shape == (6,) and ((tau > 1) & (tau < 21)).all()
    kd_loss(s.detach(), t, tau).backward()
    reversed_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    kd_loss(s.detach(), t, net(t, s, -1.0)).backward()  # lam = -1: the plain gradient
    for a, b in zip(reversed_grads, net.parameters()):
        torch.testing.assert_close(a, -b.grad)
    assert s.grad is None  # the student's logits enter the temperature network detached
