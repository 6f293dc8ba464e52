"""CSKD's pieces: the ViT's token logits, dense logits and patch maps, the CKF target and patch loss against loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    TINY_VIT,
)

from ssl_kd.components.schedule import Schedule
from ssl_kd.errors import UserError
from ssl_kd.losses import align_dense, ckf_target, kd_loss, patch_distill_loss
from ssl_kd.losses.cskd import ckf_logits, cskd_terms
from ssl_kd.models import create_model
from ssl_kd.stages.cskd import CSKDConfig, official_prediction


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


def test_dist_head_on_the_patch_tokens_and_the_official_prediction():
    """Zzzzz1/CSKD@fa0d8b8 VisionTransformer.forward: head_dist on every patch token; in eval mode the prediction is
    (head(cls) + head_dist(dist) + mean over patches of head_dist(patch)) / 3."""
    torch.manual_seed(3)
    m = create_model("vit", 6, **TINY_VIT, dist_token=True).eval()
    for p in m.parameters():  # the heads are zero-initialised: give them values
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 3, 8, 8)
    out = m(x, return_dense=True, dense_head="dist")
    tokens, _ = m.tokens(x)
    patches = [m.dist_head(tokens[:, 2 + k]) for k in range(16)]  # 4x4 grid, row-major
    assert torch.allclose(out.aux["dense"][:, :, 1, 2], patches[4 + 2], atol=1e-6)
    want = (m.fc(tokens[:, 0]) + m.dist_head(tokens[:, 1]) + sum(patches) / 16) / 3
    pred = official_prediction(out)
    assert list(pred) == ["avg3", "avg", "cls", "dist", "dense"]
    assert torch.allclose(pred["avg3"], want, atol=1e-5)
    assert torch.allclose(pred["avg"], m.predict({"x": x})["avg"], atol=1e-6)
    assert torch.equal(m(x, return_dense=True).aux["dense"], m(x, return_dense=True, dense_head="patch").aux["dense"])
    with pytest.raises(ValueError, match="dist_token"):
        create_model("vit", 6, **TINY_VIT)(x, return_dense=True, dense_head="dist")


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


def test_ckf_fuses_logits_as_the_official_code_and_the_argmax_can_differ_from_probability_fusion():
    """Zzzzz1/CSKD@fa0d8b8 get_loss_cskd: r T_i + (1 - r) t with r = 1 - beta. By hand at beta 0.5: local logits
    (0, 4, 3), global (3, 0, 2) -> (1.5, 2, 2.5), class 2; fusing their softmaxes instead gives
    ((0.0132 + 0.7054) / 2, (0.7213 + 0.0351) / 2, (0.2654 + 0.2595) / 2) = (0.359, 0.378, 0.262), class 1."""
    local, glob = torch.tensor([0.0, 4.0, 3.0]).reshape(1, 3, 1, 1), torch.tensor([[3.0, 0.0, 2.0]])
    z = ckf_logits(local, glob, 0.5)
    assert torch.allclose(z.flatten(), torch.tensor([1.5, 2.0, 2.5]))
    q = ckf_target(local, glob, 0.5)
    assert torch.allclose(q.flatten(), torch.tensor([0.35930, 0.37826, 0.26244]), atol=1e-5)
    assert z.argmax(dim=1).item() == 2 and q.argmax(dim=1).item() == 1
    s = torch.zeros(1, 3, 1, 1)
    assert patch_distill_loss(s, z).item() == pytest.approx(math.log(3))  # CE of uniform logits vs class 2
    assert torch.equal(ckf_logits(local, glob, 0.0), local) and torch.allclose(
        ckf_logits(local, glob, 1.0)[..., 0, 0], glob
    )


def _per_position_loop(s, target, tau, kind, target_is):
    """Transcription: for every image and position, the loss between one logit vector and one target vector."""
    out = []
    for b in range(s.shape[0]):
        for i in range(s.shape[2]):
            for j in range(s.shape[3]):
                z, t = s[b, :, i, j].tolist(), target[b, :, i, j].tolist()
                if target_is == "logits":
                    lse_t = math.log(sum(math.exp(v / tau) for v in t))
                    p = [math.exp(v / tau - lse_t) for v in t]
                else:
                    p = t
                if kind == "hard":
                    k = max(range(len(t)), key=lambda c: t[c])
                    out.append(math.log(sum(math.exp(v) for v in z)) - z[k])
                    continue
                lse = math.log(sum(math.exp(v / tau) for v in z))
                term = sum(-pc * (zc / tau - lse) for pc, zc in zip(p, z))
                if kind == "kl":
                    term += sum(pc * math.log(pc) for pc in p if pc > 0)
                out.append(tau * tau * term)
    return out


@pytest.mark.parametrize("target_is", ["logits", "probs"])
@pytest.mark.parametrize("reduction", ["official", "mean", "sum"])
@pytest.mark.parametrize("kind", ["soft_ce", "kl", "hard"])
def test_patch_loss_matches_a_loop_transcription(kind, reduction, target_is):
    """official = the code's reductions: hard F.cross_entropy (mean over images and positions); soft summed over
    positions and classes / batch size."""
    torch.manual_seed(1)
    s = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    local, glob = torch.randn(2, 4, 3, 2), torch.randn(2, 4)
    target = ckf_logits(local, glob, 0.4) if target_is == "logits" else ckf_target(local, glob, 0.4, 1.5)
    per = _per_position_loop(s, target.double(), 1.5, kind, target_is)
    by_sum = reduction == "sum" or (reduction == "official" and kind != "hard")
    want = sum(per) / 2 if by_sum else sum(per) / len(per)
    got = patch_distill_loss(s, target, 1.5, kind, reduction, target_is)
    assert got.item() == pytest.approx(want, rel=1e-5)


def _official_cskd_loss(cls, dist, dense_tokens, tea_dense, labels, epoch, max_epoch, deit_type, cskd_type, tau):
    """Independent transcription of Zzzzz1/CSKD@fa0d8b8 cskd/cskd.py CSKDLoss.forward (base = plain CE, the
    configs' alpha 0.5 and weight 1, linear decay) in Python loops: student dense tokens (N, M, C) on a 2h x 2w
    row-major grid, 2x2-average-pooled onto the teacher's h x w."""

    def ce(z, k):
        return math.log(sum(math.exp(v) for v in z)) - z[k]

    def log_softmax(z):
        lse = math.log(sum(math.exp(v / tau) for v in z))
        return [v / tau - lse for v in z]

    def kl(z_s, z_t):  # sum_c p_t (log p_t - log p_s), tau^2 applied by the caller
        ls, lt = log_softmax(z_s), log_softmax(z_t)
        return sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))

    n, c, h, w = tea_dense.shape
    argmax = lambda v: max(range(len(v)), key=lambda k: v[k])  # noqa: E731
    glob = [[sum(tea_dense[b, k].flatten().tolist()) / (h * w) for k in range(c)] for b in range(n)]
    base = sum(ce(cls[b].tolist(), int(labels[b])) for b in range(n)) / n
    if deit_type == "hard":
        deit = sum(ce(dist[b].tolist(), argmax(glob[b])) for b in range(n)) / n
    else:
        deit = sum(kl(dist[b].tolist(), glob[b]) for b in range(n)) * tau * tau / (n * c)
    r = 1 - epoch / max_epoch
    cskd = 0.0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                rows = [(2 * i + di) * (2 * w) + 2 * j + dj for di in (0, 1) for dj in (0, 1)]
                s = [sum(dense_tokens[b, m, k].item() for m in rows) / 4 for k in range(c)]
                t = [r * tea_dense[b, k, i, j].item() + (1 - r) * glob[b][k] for k in range(c)]
                cskd += ce(s, argmax(t)) / (n * h * w) if cskd_type == "hard" else kl(s, t) * tau * tau / n
    return 0.5 * base + 0.5 * deit + 1.0 * cskd


@pytest.mark.parametrize("epoch", [0, 3, 7])
@pytest.mark.parametrize(("deit_type", "cskd_type"), [("hard", "hard"), ("soft", "soft"), ("hard", "soft")])
def test_cskd_total_matches_the_official_loss(epoch, deit_type, cskd_type):
    """The stage's defaults (weights 0.5 / 0.5 / 1, beta = epoch / epochs, logit fusion, dist head on the patch
    tokens, pooled student) against the transcription; the code's soft patch loss is our `kl`."""
    torch.manual_seed(epoch)
    n, c, h, w, tau = 2, 5, 2, 2, 2.0
    cls, dist, labels = torch.randn(n, c), torch.randn(n, c), torch.tensor([1, 4])
    tokens = 3 * torch.randn(n, 4 * h * w, c)
    tea_dense = 3 * torch.randn(n, c, h, w)
    student_dense = tokens.transpose(1, 2).reshape(n, c, 2 * h, 2 * w)  # the ViT's `_grid` layout
    beta_cfg = CSKDConfig.model_fields["beta"].get_default(call_default_factory=True)
    beta = Schedule(beta_cfg).at(epoch * 3 + 1, steps_per_epoch=3, total_steps=8 * 3)  # a step inside the epoch
    assert beta == epoch / 8
    terms = cskd_terms(
        cls, dist, labels, tea_dense.mean(dim=(2, 3)), student_dense, tea_dense, beta, temperature=tau,
        token_kd=deit_type, patch_kd="hard" if cskd_type == "hard" else "kl",
    )  # fmt: skip
    weights = CSKDConfig.model_fields["loss_weights"].get_default(call_default_factory=True)
    total = sum(weights[k] * v for k, v in terms.items())
    want = _official_cskd_loss(cls, dist, tokens, tea_dense, labels, epoch, 8, deit_type, cskd_type, tau)
    assert total.item() == pytest.approx(want, rel=1e-5)


def test_cskd_terms_earlier_readings_as_options():
    """token_reduction batch = Hinton's KD (C times the code's); without dense logits there is no patch term."""
    torch.manual_seed(2)
    z, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    a = cskd_terms(z, z, y, t, token_kd="soft", temperature=2.0)
    b = cskd_terms(z, z, y, t, token_kd="soft", temperature=2.0, token_reduction="batch")
    assert (
        set(a) == {"ce", "kd"} and torch.allclose(b["kd"], kd_loss(z, t, 2.0)) and torch.allclose(a["kd"] * 4, b["kd"])
    )


def test_align_dense():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)
    ps, pt = align_dense(s, t, "pool_student")
    assert pt is t and torch.allclose(ps[:, :, 1, 0], s[:, :, 2:4, 0:2].mean(dim=(2, 3)))
    rs, rt = align_dense(s, t, "resize_teacher", "nearest")
    assert rs is s and rt.shape == (2, 3, 4, 4) and torch.equal(rt[:, :, 3, 1], t[:, :, 1, 0])
    same = torch.randn(2, 3, 4, 4)
    assert align_dense(s, same)[1] is same
