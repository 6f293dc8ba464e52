"""CSKD's pieces: the ViT's token logits, dense logits and patch maps, the CKF target and patch loss against loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    TINY_VIT,
)

from ssl_kd.errors import UserError
from ssl_kd.losses import align_dense, ckf_target, patch_distill_loss
from ssl_kd.models import create_model


# ------------------------------------------------------------------------------------------------ models
def test_vit_outputs_class_token_logits_dense_logits_and_patch_maps():
    m = create_model("vit_cifar_tiny", 7, dist_token=True).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x, return_feats=True, return_dense=True)
    assert out.logits.shape == (2, 7) and out.feat.shape == (2, 192)
    assert out.aux["dist"].shape == (2, 7) and out.aux["dense"].shape == (2, 7, 8, 8)
    assert len(out.feats) == 7 and out.feats[-1].shape == (2, 192, 8, 8)  # embedding + 6 blocks
    assert "dense" not in m(x).aux  # dense logits only when asked
    # the dense logits are the patch head on each patch token (tokens: cls, dist, then row-major patches)
    tokens, _ = m.tokens(x)
    for i, j in [(0, 0), (3, 5), (7, 7)]:
        assert torch.allclose(out.aux["dense"][:, :, i, j], m.patch_head(tokens[:, 2 + 8 * i + j]), atol=1e-6)
    pred = m.predict({"x": x})
    assert list(pred) == ["avg", "cls", "dist"]  # DeiT's test-time rule is the headline
    assert torch.allclose(pred["avg"], (out.logits + out.aux["dist"]) / 2)
    plain = create_model("vit", 5, **TINY_VIT)
    assert plain.predict({"x": torch.randn(1, 3, 8, 8)}).shape == (1, 5)
    with pytest.raises(ValueError, match="image_size"):
        plain(torch.randn(1, 3, 16, 16))


def test_vit_presets_and_bad_options():
    def count(m):  # DeiT's own parameter counts (timm), i.e. without our patch head
        return sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in m.patch_head.parameters())

    assert count(create_model("deit_tiny", 1000)) == 5_717_416
    assert count(create_model("deit_small", 1000)) == 22_050_664
    assert count(create_model("deit_tiny", 1000, dist_token=True)) == 5_910_800  # deit_tiny_distilled
    for name, grid, dim in [("vit_cifar_small", 8, 384), ("deit_tiny", 14, 192), ("deit_small", 14, 384)]:
        m = create_model(name, 10)
        assert (m.grid, m.feat_dim) == (grid, dim)
    assert len(create_model("vit_cifar_small", 10).encoder.layers) == 12
    with pytest.raises(UserError, match="patch_size"):
        create_model("vit", 10, image_size=32, patch_size=5)
    with pytest.raises(UserError, match="heads"):
        create_model("vit", 10, dim=100, heads=3)


@pytest.mark.parametrize("arch", ["resnet8x4", "wrn_16_2", "mobilenetv2", "vgg8", "shufflenetv2", "cnn_small"])
def test_dense_teacher_logits_average_to_the_pooled_logits(arch):
    torch.manual_seed(0)
    m = create_model(arch, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x, return_dense=True)
    dense = out.aux["dense"]
    assert dense.ndim == 4 and dense.shape[:2] == (2, 10)
    assert torch.allclose(dense.mean(dim=(2, 3)), out.logits, atol=1e-5)  # linear head: mean of dense = pooled
    assert torch.equal(out.logits, m(x).logits)  # asking for dense logits changes nothing else
    _, fmap = m.forward_map(x)
    i, j = dense.shape[-2] - 1, 0
    assert torch.allclose(dense[:, :, i, j], m.fc(fmap[:, :, i, j]), atol=1e-5)  # the classifier at one position


def test_dense_forward_updates_batchnorm_once_and_mlp_has_none():
    torch.manual_seed(0)
    a, b = create_model("wrn_16_2", 10), create_model("wrn_16_2", 10)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 32, 32)
    a(x)
    b(x, return_dense=True)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(TypeError, match="no dense logits"):
        create_model("mlp", 10)(x, return_dense=True)


# ------------------------------------------------------------------------------------------------ CSKD losses
def test_ckf_target_at_beta_0_and_1_and_in_between():
    torch.manual_seed(0)
    local, glob = torch.randn(2, 5, 3, 3), torch.randn(2, 5)
    q0, q1 = ckf_target(local, glob, 0.0, 2.0), ckf_target(local, glob, 1.0, 2.0)
    assert torch.allclose(q0, F.softmax(local / 2.0, dim=1))
    assert torch.allclose(q1, F.softmax(glob / 2.0, dim=1)[:, :, None, None].expand_as(q1))
    q = ckf_target(local, glob, 0.3)
    assert torch.allclose(q.sum(dim=1), torch.ones(2, 3, 3))
    # by hand: local logits (0, ln 3) -> (1/4, 3/4); global (0, 0) -> (1/2, 1/2); beta 0.5 -> (3/8, 5/8)
    hand = ckf_target(torch.tensor([0.0, math.log(3)]).reshape(1, 2, 1, 1), torch.zeros(1, 2), 0.5)
    assert torch.allclose(hand.flatten(), torch.tensor([3 / 8, 5 / 8]))


def _patch_loss_loop(s, q, tau, kind):
    """Transcription: for every image and position, the loss between one logit vector and one target vector."""
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[2]):
            for j in range(s.shape[3]):
                z, p = s[b, :, i, j].tolist(), q[b, :, i, j].tolist()
                if kind == "hard":
                    k = max(range(len(p)), key=lambda c: p[c])
                    lse = math.log(sum(math.exp(v) for v in z))
                    total += lse - z[k]
                else:
                    lse = math.log(sum(math.exp(v / tau) for v in z))
                    term = sum(-pc * (zc / tau - lse) for pc, zc in zip(p, z))
                    if kind == "kl":
                        term += sum(pc * math.log(pc) for pc in p if pc > 0)
                    total += tau * tau * term
                n += 1
    return total / n


@pytest.mark.parametrize("kind", ["soft_ce", "kl", "hard"])
def test_patch_loss_matches_a_loop_transcription(kind):
    torch.manual_seed(1)
    s = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    q = ckf_target(torch.randn(2, 4, 3, 2), torch.randn(2, 4), 0.4, 1.5).double()
    got = patch_distill_loss(s, q, 1.5, kind)
    assert got.item() == pytest.approx(_patch_loss_loop(s, q, 1.5, kind), rel=1e-5)


def test_align_dense():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)
    ps, pt = align_dense(s, t, "pool_student")
    assert pt is t and torch.allclose(ps[:, :, 1, 0], s[:, :, 2:4, 0:2].mean(dim=(2, 3)))
    rs, rt = align_dense(s, t, "resize_teacher", "nearest")
    assert rs is s and rt.shape == (2, 3, 4, 4) and torch.equal(rt[:, :, 3, 1], t[:, :, 1, 0])
    same = torch.randn(2, 3, 4, 4)
    assert align_dense(s, same)[1] is same
