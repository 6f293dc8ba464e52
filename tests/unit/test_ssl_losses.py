"""SSL terms: hand-computed values (incl. a worked example of FullMatch's adaptive k, ANL and EML as coded in
megvii-research/FullMatch@c54c0b9 models/fullmatch/fullmatch_utils.py) and an independent, loop-based transcription
of the reference formulas on random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_kd.losses import (
    adaptive_topk,
    anl_loss,
    consistency_loss,
    eml_loss,
    flexmatch_class_thresholds,
)
from ssl_kd.losses.ssl import history_counts
from ssl_kd.memory import PseudoLabelHistory

# ------------------------------------------------------------------ a worked example (k, ANL, EML)
PW = torch.tensor([[0.96, 0.02, 0.01, 0.007, 0.003], [0.40, 0.35, 0.15, 0.06, 0.04]])
PS = torch.tensor([[0.70, 0.05, 0.15, 0.06, 0.04], [0.20, 0.45, 0.25, 0.07, 0.03]])
ZW, ZS = PW.log(), PS.log()  # logits whose softmax is exactly these probabilities
MASK = torch.tensor([1.0, 0.0])


def test_worked_example_k():
    assert adaptive_topk(ZW, ZS) == 3


def test_worked_example_anl():
    expected = 0.5 * ((-math.log(0.94) - math.log(0.96)) + (-math.log(0.93) - math.log(0.97)))
    assert anl_loss(ZW, ZS, 3).item() == pytest.approx(expected, rel=1e-5)
    assert anl_loss(ZW, ZS, 3).item() == pytest.approx(0.10286, abs=1e-5)


def test_worked_example_eml():
    q = 0.10
    bce = [-(q * math.log(p) + (1 - q) * math.log(1 - p)) for p in (0.05, 0.15)]
    assert eml_loss(ZW, ZS, 3, MASK).item() == pytest.approx(sum(bce) / 2, rel=1e-5)
    assert eml_loss(ZW, ZS, 3, MASK).item() == pytest.approx(0.34086, abs=1e-5)


def test_worked_example_consistency():
    assert consistency_loss(ZS, ZW.argmax(1), MASK).item() == pytest.approx(-math.log(0.70) / 2, rel=1e-6)


# ------------------------------------------------------------------ independent reference transcription
def ref_k(pw, ps):
    """FullMatch's cal_topK loop: first k >= 2 with top-k accuracy of yhat in the strong view > 99.99 %."""
    yhat = pw.argmax(1)
    for k in range(2, pw.shape[1] + 1):
        top = ps.topk(k, dim=1).indices
        acc = 100.0 * (top == yhat[:, None]).any(1).float().mean().item()
        if acc > 99.99:
            return k
    return pw.shape[1]


def ref_anl(pw, ps, k, tau):
    total = 0.0
    for b in range(pw.shape[0]):
        top = set(pw[b].topk(k).indices.tolist())
        for c in range(pw.shape[1]):
            if c not in top and ps[b, c] <= tau**2:
                total += -math.log(1 - ps[b, c].item() + 1e-10)
    return total / pw.shape[0]


def ref_eml(pw, ps, k, sel, tau):
    num = den = 0.0
    for b in range(pw.shape[0]):
        yhat = int(pw[b].argmax())
        cand = [c for c in pw[b].topk(k).indices.tolist() if c != yhat]
        q = (1 - sum(ps[b, c].item() for c in range(pw.shape[1]) if c not in cand) + 1e-7) / (k - 1)
        for c in cand:
            if sel[b] and ps[b, c] <= tau**2:
                p = ps[b, c].item()
                num += -(q * math.log(p + 1e-10) + (1 - q) * math.log(1 - p + 1e-10))
                den += 1
    return num / (den + 1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_against_reference_transcription_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    b, c = 16, 10
    zw = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    zs = zw + torch.randn(b, c, generator=g, dtype=torch.float64)  # correlated views, as in training
    pw, ps = zw.softmax(1), zs.softmax(1)
    tau = 0.6  # low enough that the mask selects some samples
    sel = (pw.max(1).values >= tau).float()
    k = adaptive_topk(zw, zs)
    assert k == ref_k(pw, ps)
    assert anl_loss(zw, zs, k, tau).item() == pytest.approx(ref_anl(pw, ps, k, tau), rel=1e-5, abs=1e-7)
    assert eml_loss(zw, zs, k, sel, tau).item() == pytest.approx(ref_eml(pw, ps, k, sel, tau), rel=1e-5, abs=1e-7)
    ce = -(ps.log().gather(1, pw.argmax(1, keepdim=True)).squeeze(1) * sel).sum() / b
    assert consistency_loss(zs, pw.argmax(1), sel).item() == pytest.approx(ce.item(), rel=1e-5)


def test_consistency_normalised_by_unlabelled_batch_not_mask_count():
    z = torch.zeros(4, 2)
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert consistency_loss(z, torch.zeros(4, dtype=torch.long), mask).item() == pytest.approx(math.log(2) / 4)


def test_soft_pseudo_labels():
    z = torch.zeros(2, 2)
    soft = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert consistency_loss(z, soft, torch.ones(2)).item() == pytest.approx(math.log(2))


def test_eml_gradient_flows_through_target_unless_detached():
    zs = ZS.clone().requires_grad_(True)
    g1 = torch.autograd.grad(eml_loss(ZW, zs, 3, MASK), zs)[0]
    g2 = torch.autograd.grad(eml_loss(ZW, zs, 3, MASK, detach_target=True), zs)[0]
    assert not torch.allclose(g1, g2)
    assert torch.count_nonzero(g1[1]) == 0  # sample 2 is not selected: no EML gradient


def test_weak_logits_get_no_gradient():
    zw = ZW.clone().requires_grad_(True)
    zs = ZS.clone().requires_grad_(True)
    (anl_loss(zw, zs, 3) + eml_loss(zw, zs, 3, MASK)).backward()
    assert zw.grad is None and zs.grad is not None


# ------------------------------------------------------------------ adaptive k edge cases
def test_k_is_at_least_two_when_views_agree():
    z = torch.tensor([[5.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    assert adaptive_topk(z, z) == 2


def test_k_is_num_classes_when_pseudo_label_is_last_in_strong_view():
    zw = torch.tensor([[5.0, 1.0, 0.0, -1.0]])
    zs = torch.tensor([[-9.0, 1.0, 2.0, 3.0]])
    assert adaptive_topk(zw, zs) == 4


def test_k_ties_count_as_not_above():
    zw = torch.tensor([[5.0, 0.0, 0.0]])
    zs = torch.tensor([[1.0, 1.0, 1.0]])  # all tied: nothing is strictly above the pseudo-label
    assert adaptive_topk(zw, zs) == 2


def test_k_max_over_batch():
    zw = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    zs = torch.tensor([[3.0, 0.0, 0.0, 0.0], [4.0, 0.0, 3.0, 2.0]])  # sample 2: yhat=1 ranked 4th
    assert adaptive_topk(zw, zs) == 4


# ------------------------------------------------------------------ FlexMatch thresholds
def test_flexmatch_all_unused_start_gives_zero_thresholds():
    hist = torch.full((10,), -1)
    assert torch.equal(flexmatch_class_thresholds(hist, 3), torch.zeros(3))


def test_flexmatch_crafted_history_with_warmup():
    # 10 samples: 4 unused, class0 x3, class1 x2, class2 x1 -> beta = n_c / max(4, 3) = [3/4, 2/4, 1/4]
    hist = torch.tensor([-1, -1, -1, -1, 0, 0, 0, 1, 1, 2])
    beta = torch.tensor([0.75, 0.5, 0.25])
    expected = 0.95 * beta / (2 - beta)
    assert torch.allclose(flexmatch_class_thresholds(hist, 3, tau=0.95), expected)


def test_flexmatch_crafted_history_without_warmup():
    hist = torch.tensor([-1, -1, -1, -1, 0, 0, 0, 1, 1, 2])
    beta = torch.tensor([1.0, 2 / 3, 1 / 3])
    assert torch.allclose(flexmatch_class_thresholds(hist, 3, warmup=False), 0.95 * beta / (2 - beta))


def test_history_counts_are_a_fixed_size_histogram_without_a_sync():
    """FlexMatch's class counts (never selected first): the counts a loop gives, the thresholds torch.bincount
    gave (the previous code), and no host sync (bincount reads the max on the host)."""
    from sync_trap import SyncTrap

    hist = torch.tensor([-1, 2, 0, -1, 2, 2, 1, -1, -1, 0])
    by_hand = [0] * 4
    for label in hist.tolist():
        by_hand[label + 1] += 1
    with SyncTrap() as trap:
        counts = history_counts(hist, 3)
        t = flexmatch_class_thresholds(hist, 3)
    assert not trap.events, trap.summary()
    assert counts.dtype == torch.long and counts.tolist() == by_hand == [4, 2, 1, 3]
    old = torch.bincount(hist + 1, minlength=4).float()
    beta = old[1:] / torch.maximum(old[0], old[1:].max())
    assert torch.equal(t, 0.95 * (beta / (2.0 - beta)))


def test_history_keeps_beta_when_all_entries_agree_and_updates_with_fixed_tau():
    h = PseudoLabelHistory(4, 2, tau=0.95, warmup=True, device=torch.device("cpu"))
    assert torch.equal(h.class_thresholds(), torch.zeros(2))  # start: everything passes
    # confidences above the flexible (0) threshold but below tau are NOT recorded
    h.update(torch.tensor([0, 1]), torch.tensor([0.5, 0.97]), torch.tensor([1, 0]))
    assert h.selected_label.tolist() == [-1, 0, -1, -1]
    t = h.class_thresholds()  # 3 unused, class0 x1 -> beta = [1/3, 0]
    assert torch.allclose(t, 0.95 * torch.tensor([1 / 3, 0.0]) / (2 - torch.tensor([1 / 3, 0.0])))
    h.update(torch.tensor([0, 2, 3]), torch.tensor([0.99, 0.99, 0.99]), torch.tensor([0, 0, 0]))
    assert torch.equal(h.class_thresholds(), t)  # all entries one class: beta kept (the reference's condition)
    state = h.state_dict()
    h2 = PseudoLabelHistory(4, 2, tau=0.95, warmup=True, device=torch.device("cpu"))
    h2.load_state_dict(state)
    assert torch.equal(h2.selected_label, h.selected_label) and torch.equal(h2.beta, h.beta)
