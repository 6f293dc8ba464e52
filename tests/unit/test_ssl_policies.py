"""USB's SSL policies (semilearn 0.3.2: FreeMatch, SoftMatch, AdaMatch, Dash, distribution alignment, UDA's TSA,
the Pi-model's MSE) against hand-computed values. The expected numbers are worked out by hand in the comments (or by
a plain loop over samples), never by calling ssl_kd twice."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_kd.components.dist_align import DIST_ALIGN
from ssl_kd.components.threshold import THRESHOLD, WeakView
from ssl_kd.losses.ssl import freematch_fairness_loss, tsa_threshold, weighted_consistency

CPU = torch.device("cpu")


def build(block: dict, **ctx):
    return THRESHOLD.build(THRESHOLD.validate(block), device=CPU, **ctx)


def view(probs, **kw) -> WeakView:
    p = torch.tensor(probs)
    return WeakView(p, p.log(), torch.arange(len(p)), **kw)


def test_freematch_updates_then_masks():
    pol = build({"type": "freematch", "momentum": 0.5}, num_classes=3)
    # conf = [.7, .4], mean .55: tau_t = (1/3 + .55) / 2 = .441667
    # mean p = [.55, .275, .175]: p_model = ([1/3]*3 + mean) / 2 = [.441667, .304167, .254167]
    # sample 2 predicts class 0 (local threshold 1): .4 < .441667 -> out
    w = pol.weights(view([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]))
    assert w.tolist() == [1.0, 0.0]
    assert pol.time_p.item() == pytest.approx(0.4416667, abs=1e-6)
    assert pol.p_model.tolist() == pytest.approx([0.4416667, 0.3041667, 0.2541667], abs=1e-6)
    # both predict class 0: hist [1, 0, 0] -> label_hist = ([1/3]*3 + [1, 0, 0]) / 2
    assert pol.label_hist.tolist() == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=1e-6)
    thr = pol.class_thresholds().tolist()  # tau_t * p_model / max p_model
    assert thr == pytest.approx([0.4416667, 0.4416667 * 0.3041667 / 0.4416667, 0.2541667], abs=1e-6)


def test_freematch_state_round_trips():
    pol = build({"type": "freematch", "momentum": 0.9}, num_classes=3)
    pol.weights(view([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]))
    other = build({"type": "freematch", "momentum": 0.9}, num_classes=3)
    other.load_state_dict(pol.state_dict())
    nxt = [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]
    assert torch.equal(pol.weights(view(nxt)), other.weights(view(nxt)))
    assert torch.equal(pol.time_p, other.time_p) and torch.equal(pol.label_hist, other.label_hist)


def _fairness_by_hand(p_s, mask, p_model, label_hist):
    """FreeMatch's entropy_loss on the selected rows, as USB writes it, with plain Python lists."""
    rows = [r for r, m in zip(p_s, mask) if m]
    c = len(p_model)
    hist = [0.0] * c
    for r in rows:
        hist[max(range(c), key=r.__getitem__)] += 1
    hist = [h / len(rows) for h in hist]
    inv = lambda v: 0.0 if v == 0 else 1.0 / v  # noqa: E731  (USB: 1/x with inf -> 0)
    pm = [p * inv(h) for p, h in zip(p_model, label_hist)]
    pm = [v / sum(pm) for v in pm]
    mean = [sum(r[j] for r in rows) / len(rows) * inv(hist[j]) for j in range(c)]
    mean = [v / sum(mean) for v in mean]
    return sum(a * math.log(b + 1e-12) for a, b in zip(pm, mean))


def test_freematch_fairness_term():
    logits = torch.tensor([[2.0, 0.5, 0.1], [0.3, 1.5, 0.2], [1.0, 0.9, 0.8]])
    mask = torch.tensor([1.0, 1.0, 0.0])
    p_model, label_hist = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.4, 0.4, 0.2])
    p_s = torch.softmax(logits, -1).tolist()
    want = _fairness_by_hand(p_s, mask.tolist(), p_model.tolist(), label_hist.tolist())
    got = freematch_fairness_loss(logits, mask, p_model, label_hist)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # class 2 never predicted among the selected: its mean term is 0, log(1e-12) enters with weight p_model/hist
    assert want < -1.0
    # nothing selected: USB skips the term (0), here without a host sync
    assert freematch_fairness_loss(logits, torch.zeros(3), p_model, label_hist).item() == 0.0


def test_softmatch_truncated_gaussian():
    pol = build({"type": "softmatch", "momentum": 0.5, "n_sigma": 2}, num_classes=4)
    probs = [[0.9, 0.05, 0.03, 0.02], [0.5, 0.2, 0.2, 0.1], [0.3, 0.25, 0.25, 0.2]]
    # conf [.9, .5, .3]: mean .566667, unbiased var ((1/3)^2 + (1/15)^2 + (4/15)^2) / 2 = .0933333
    # mu = (.25 + .566667) / 2 = .408333, var = (1 + .0933333) / 2 = .546667
    w = pol.weights(view(probs))
    assert pol.mu.item() == pytest.approx(0.4083333, abs=1e-6)
    assert pol.var.item() == pytest.approx(0.5466667, abs=1e-6)
    # .3 < mu: exp(-(.108333)^2 / (2 * .546667 / 4)) = exp(-.0429370) = .957972
    assert w.tolist() == pytest.approx([1.0, 1.0, 0.957972], abs=1e-6)
    # EML's selected set for continuous weights: confidence >= mu_t (the untruncated part)
    assert pol.selected(w).tolist() == [1.0, 1.0, 0.0]


def test_adamatch_relative_threshold():
    pol = build({"type": "adamatch", "tau": 0.95})
    # labelled max-confidences [.8, .6]: cut-off .95 * .7 = .665
    lb = torch.tensor([[0.8, 0.2], [0.4, 0.6]])
    w = pol.weights(view([[0.7, 0.3], [0.35, 0.65]], probs_lb=lb))
    assert w.tolist() == [1.0, 0.0]
    assert pol.diagnostics()["threshold"].item() == pytest.approx(0.665)


def test_dist_align_uniform_and_labelled():
    uni = DIST_ALIGN.build(DIST_ALIGN.validate({"type": "uniform", "momentum": 0.5}), num_classes=2, device=CPU)
    p = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    # first step: p_model = the batch mean [.7, .3]; row 1: .8 * (.5 + 1e-6) / (.7 + 1e-6), .2 * .5 / .3 ...
    a = uni(p)
    r0 = [0.8 * (0.5 + 1e-6) / (0.7 + 1e-6), 0.2 * (0.5 + 1e-6) / (0.3 + 1e-6)]
    assert a[0].tolist() == pytest.approx([v / sum(r0) for v in r0], abs=1e-6)
    # second step: p_model = .5 [.7, .3] + .5 [.5, .5] = [.6, .4]
    uni(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    assert uni.p_model.tolist() == pytest.approx([0.6, 0.4])
    lab = DIST_ALIGN.build(DIST_ALIGN.validate({"type": "labelled", "momentum": 0.5}), num_classes=2, device=CPU)
    lab(p, torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
    assert lab.p_target.tolist() == pytest.approx([0.7, 0.3])  # .5 [.5, .5] + .5 [.9, .1]
    assert DIST_ALIGN.build(DIST_ALIGN.validate("none"))(p) is p


def test_dash_rho_schedule_and_label_switch():
    pol = build({"type": "dash", "rho_init": 1.0, "C": 1.0, "gamma": 2.0, "rho_min": 0.3, "update_every": 2})
    # rho_t = max(gamma^-(t // 2) * 1, .3): 1, 1, .5, .5, .3 (floor: hard labels from then on)
    rhos, hard = [], []
    for t in range(5):
        pol.weights(view([[0.6, 0.4]], step=t))
        rhos.append(round(pol.rho.item(), 6))
        hard.append(bool(pol.hard_labels()))
    assert rhos == [1.0, 1.0, 0.5, 0.5, 0.3] and hard == [False] * 4 + [True]


def test_dash_mask_is_the_loss_against_the_sharpened_label():
    pol = build({"type": "dash", "rho_init": 0.5, "C": 1.0, "gamma": 2.0, "rho_min": 0.01}, temperature=0.5)
    logits = torch.tensor([[2.0, 0.0], [0.2, 0.0]])
    v = WeakView(torch.softmax(logits, -1), logits, torch.arange(2), step=0)
    # row 1: t = softmax([4, 0]) = [.982014, .017986]; log p = [-.126928, -2.126928]: CE = .162900 <= .5
    # row 2: t = softmax([.4, 0]) = [.598688, .401312]; log p = [-.598139, -.798139]: CE = .678402 > .5
    assert pol.weights(v).tolist() == [1.0, 0.0]


def test_dash_estimates_rho_in_its_warmup():
    pol = build({"type": "dash", "warmup_iters": 3, "estimate_steps": 2, "C": 1.0, "gamma": 2.0, "update_every": 1})
    for t, loss in enumerate([3.0, 2.0, 1.0]):
        assert pol.weights(view([[0.6, 0.4]], step=t, sup_loss=torch.tensor(loss))).tolist() == [0.0]
    assert pol.rho_init.item() == pytest.approx(1.5)  # mean of the last two warm-up steps' labelled CE
    pol.weights(view([[0.6, 0.4]], step=3))
    assert pol.rho.item() == pytest.approx(1.5)  # first decay count 0 at the end of the warm-up
    with pytest.raises(ValueError, match="rho_init or warmup_iters"):
        build({"type": "dash", "warmup_iters": 0})


def test_none_policy_weights_every_sample():
    assert build({"type": "none"}).weights(view([[0.5, 0.5], [0.9, 0.1]])).tolist() == [1.0, 1.0]


def test_tsa_thresholds():
    assert tsa_threshold("none", 0.3, 10) == 1.0
    assert tsa_threshold("linear", 0.5, 10) == pytest.approx(0.55)  # .5 * .9 + .1
    assert tsa_threshold("exp", 0.5, 10) == pytest.approx(math.exp(-2.5) * 0.9 + 0.1)
    assert tsa_threshold("log", 0.5, 10) == pytest.approx((1 - math.exp(-2.5)) * 0.9 + 0.1)


def test_mse_and_kl_consistency():
    z = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # softmax rows [.5, .5], [.75, .25]
    t = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # mse per row: mean((.5, .5)^2) = .25; mean((.25, .25)^2) = .0625; batch mean .15625
    assert weighted_consistency(z, t, None, "mse").item() == pytest.approx(0.15625)
    assert weighted_consistency(z, t, torch.tensor([1.0, 0.0]), "mse").item() == pytest.approx(0.125)
    # kl row 1: log(1/.5) = .693147; row 2: .5 log(.5/.75) + .5 log(.5/.25) = .143841
    assert weighted_consistency(z, t, None, "kl").item() == pytest.approx((0.693147 + 0.143841) / 2, abs=1e-6)
