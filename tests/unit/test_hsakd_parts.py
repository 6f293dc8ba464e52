"""HSAKD's pieces: rotated copies with joint labels, the multi-exit joint heads, the hierarchical KD losses against
loops."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_kd.data import (
    class_logits,
    joint_labels,
    rotate4,
    rotated,
    unrotated,
)
from ssl_kd.losses import hierarchical_kd, joint_ce, kd_loss, mutual_kd
from ssl_kd.models import create_model, create_model_from_spec


# ------------------------------------------------------------------------------------------------ rotation
def test_rotation_copies_are_interleaved_per_sample_with_joint_labels():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    x4 = rotate4(x)
    assert x4.shape == (8, 1, 3, 3)
    for i in range(2):
        for k in range(4):
            expected = x[i, 0]
            for _ in range(k):  # k quarter turns counter-clockwise: (r, c) <- (c, n - 1 - r)
                expected = torch.stack([expected[:, 2 - r] for r in range(3)])
            assert torch.equal(x4[4 * i + k, 0], expected)
    assert torch.equal(unrotated(x4), x)
    assert torch.equal(rotated(torch.arange(8)), torch.tensor([1, 2, 3, 5, 6, 7]))
    assert joint_labels(torch.tensor([2, 0])).tolist() == [8, 9, 10, 11, 0, 1, 2, 3]
    joint = torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12)  # C = 3 classes x 4 rotations, class-major
    assert class_logits(joint)[1].tolist() == [12 + 13 + 14 + 15, 16 + 17 + 18 + 19, 20 + 21 + 22 + 23]
    with pytest.raises(ValueError, match="square"):
        rotate4(torch.zeros(1, 3, 4, 6))


# ------------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("backbone", ["resnet8", "wrn_16_2"])
def test_joint_label_heads_and_the_stride_one_head_after_the_last_stage(backbone):
    torch.manual_seed(0)
    m = create_model("multi_exit", 5, backbone=backbone, exits=[1, 2, 3], exit_label_factor=4).eval()
    out = m(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 5)
    for k in (1, 2, 3):
        assert out.aux[f"exit{k}"].shape == (2, 20)
        assert out.aux[f"exit{k}_map"].shape == out.aux["backbone_map"].shape  # 8x8 at the last stage's width
    blocks = len(m.backbone.stages[-1])  # the extra head is one fresh stride-1 copy of the last stage
    assert len(m.branches[-1].stages) == 1 and len(m.branches[-1].stages[0]) == blocks
    with torch.no_grad():
        pred = m.predict({"x": torch.randn(3, 3, 32, 32)})
    assert set(pred) == {"backbone", "exit1", "exit2", "exit3"} and pred["exit2"].shape == (3, 5)
    copy = create_model_from_spec(m.spec).eval()  # the spec rebuilds the same shape
    copy.load_state_dict(m.state_dict())


def test_joint_heads_are_scored_on_the_sum_of_their_rotation_logits():
    m = create_model("multi_exit", 3, backbone="resnet8", exits=[2], exit_label_factor=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        joint = m(x).aux["exit2"]
        pred = m.predict({"x": x})["exit2"]
    assert torch.allclose(pred, torch.stack([joint[:, 4 * c : 4 * c + 4].sum(1) for c in range(3)], 1))


# ------------------------------------------------------------------------------------------------ losses
def kl_loop(s: torch.Tensor, t: torch.Tensor, T: float) -> float:
    """T^2 * mean over rows of sum_c p_t log(p_t / p_s), written out."""
    total = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist()):
        zs = sum(math.exp(v / T) for v in row_s)
        zt = sum(math.exp(v / T) for v in row_t)
        for a, b in zip(row_s, row_t):
            p_s, p_t = math.exp(a / T) / zs, math.exp(b / T) / zt
            total += p_t * math.log(p_t / p_s)
    return T * T * total / len(s)


def test_kl_hand_value():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # p_t = (3/4, 1/4), p_s = (1/2, 1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_hierarchical_kd_joint_ce_and_mutual_kd_against_loops():
    torch.manual_seed(0)
    rows, c = 8, 12
    s_main, t_main = torch.randn(rows, 3), torch.randn(rows, 3)
    s_aux, t_aux = [torch.randn(rows, c) for _ in range(3)], [torch.randn(rows, c) for _ in range(3)]
    kd_aux, kd = hierarchical_kd(s_main, s_aux, t_main, t_aux, 3.0)
    assert kd.item() == pytest.approx(kl_loop(s_main, t_main, 3.0), rel=1e-5)
    assert kd_aux.item() == pytest.approx(sum(kl_loop(s, t, 3.0) for s, t in zip(s_aux, t_aux)), rel=1e-5)
    y4 = torch.randint(0, c, (rows,))
    ce = sum(-sum(math.log(math.exp(r[y]) / sum(math.exp(v) for v in r)) for r, y in zip(q.tolist(), y4.tolist()))
             / rows for q in s_aux)  # fmt: skip
    assert joint_ce(s_aux, y4).item() == pytest.approx(ce, rel=1e-5)
    a, b, d = (torch.randn(rows, 3) for _ in range(3))
    two = kl_loop(a, b, 3.0) + kl_loop(b, a, 3.0)  # the reference's two directions, each target detached
    assert mutual_kd([a, b], 3.0).item() == pytest.approx(two, rel=1e-5)
    three = sum((kl_loop(p, q, 3.0) + kl_loop(p, r, 3.0)) / 2 for p, q, r in [(a, b, d), (b, a, d), (d, a, b)])
    assert mutual_kd([a, b, d], 3.0).item() == pytest.approx(three, rel=1e-5)
    a.requires_grad_(True)
    b.requires_grad_(True)
    mutual_kd([a, b], 1.0).backward()
    ga = torch.autograd.grad(kd_loss(a, b.detach(), 1.0), a)[0]  # only a's own KL reaches a: targets are detached
    assert torch.allclose(a.grad, ga)
    with pytest.raises(ValueError, match="head l"):
        hierarchical_kd(s_main, s_aux[:2], t_main, t_aux, 3.0)
