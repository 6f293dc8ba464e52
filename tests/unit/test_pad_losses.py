"""PAD's pieces: the uncertainty-weighted feature loss against a loop and by hand, the L2 term, the variance head,
connectors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.losses import PAD_EPS, feature_l2_loss, pad_l2_loss
from ssl_kd.models.feature_heads import VarianceHead


# ------------------------------------------------------------------------------------------------ losses
def loop_pad(fs, ft, s, eps):
    b, d = fs.shape
    per = [sum((float(ft[i, j]) - float(fs[i, j])) ** 2 / (eps + math.exp(float(s[i, j]))) + float(s[i, j])
               for j in range(d)) / d for i in range(b)]  # fmt: skip
    return sum(per) / b, sum(per)


def test_pad_loss_matches_a_loop_and_hand_values():
    g = torch.Generator().manual_seed(0)
    fs, ft, s = (torch.randn(6, 5, generator=g) for _ in range(3))
    mean, total = loop_pad(fs, ft, s, PAD_EPS)
    assert float(pad_l2_loss(fs, ft, s)) == pytest.approx(mean, rel=1e-5)
    assert float(pad_l2_loss(fs, ft, s, reduction="sum")) == pytest.approx(total, rel=1e-5)
    assert PAD_EPS == 1e-6  # torchdistill's PADL2Loss default and official config
    # difference 1 everywhere: s = 0 gives 1 / (1 + eps); s = log 4 gives 1/4 + log 4
    one = torch.ones(2, 3)
    assert float(pad_l2_loss(torch.zeros(2, 3), one, torch.zeros(2, 3))) == pytest.approx(1 / (1 + 1e-6))
    s4 = torch.full((2, 3), math.log(4))
    assert float(pad_l2_loss(torch.zeros(2, 3), one, s4)) == pytest.approx(0.25 + math.log(4), rel=1e-6)
    # a larger variance down-weights the difference; the + s term stops it growing for free
    big = torch.full((2, 3), 3.0)
    assert float(pad_l2_loss(torch.zeros(2, 3), 3 * one, big)) < float(pad_l2_loss(torch.zeros(2, 3), 3 * one, s4))


def test_feature_l2_is_torchdistills_mse_mean():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 8, 1, 1, generator=g), torch.randn(4, 8, generator=g)
    assert torch.allclose(feature_l2_loss(a, b), F.mse_loss(a.flatten(1), b))
    assert float(feature_l2_loss(torch.zeros(2, 2), torch.tensor([[1.0, 2.0], [0.0, 1.0]]))) == pytest.approx(1.5)


def test_variance_head_is_linear_then_batchnorm():
    head = VarianceHead(6, seed=3)
    assert [type(m).__name__ for m in head.net] == ["Linear", "BatchNorm1d"]
    assert torch.equal(VarianceHead(6, seed=3).net[0].weight, head.net[0].weight)
    assert head(torch.randn(4, 6, 1, 1)).shape == (4, 6)


# ------------------------------------------------------------------------------------------------ stage
def test_connectors_map_student_features_to_the_teacher_width():
    from ssl_kd.models import connector_for, create_model

    small, wide = create_model("resnet8", 10), create_model("resnet8x4", 10)
    pooled = connector_for("auto", small, wide)  # 64 -> 256 pooled: linear
    assert pooled.kind == "linear" and pooled(torch.randn(2, 64)).shape == (2, 256)
    same = connector_for("auto", small, create_model("resnet20", 10))
    assert same.kind == "identity" and not list(same.parameters())
    fmap = connector_for("auto", small, wide, index=2)  # stage-2 maps: 32 -> 128 channels, 1x1 conv + BN
    assert fmap.kind == "conv_bn" and fmap(torch.randn(2, 32, 16, 16)).shape == (2, 128, 16, 16)
    a, b = connector_for("linear", small, wide, seed=3), connector_for("linear", small, wide, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # the same on every rank
    with pytest.raises(ValueError, match="equal widths"):
        connector_for("identity", small, wide)
