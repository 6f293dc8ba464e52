"""Self-distillation's pieces: mixing, boxes, RecursiveMix and MixSKD against loops and the references, the batch
history, multi-exit models, ROI features, self-teacher and critics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_kd.data import mixing
from ssl_kd.data.mixing import (
    MixConfig,
    MixParams,
    box_lam,
    cutmix_box,
    mix_tensors,
    recursive_mix,
    sample_cutmix,
    sample_mix,
    sample_paste_box,
)
from ssl_kd.errors import UserError
from ssl_kd.losses import mixskd_losses, soft_cross_entropy
from ssl_kd.memory import BatchHistory
from ssl_kd.models import FeatureCritics, MultiExit, SelfTeacher, create_model, roi_features

LN = math.log


# ================================================================================================ mixing
def _old_lam_perm(alpha, batch):
    if alpha > 0:
        a = torch.tensor(float(alpha))
        lam = float(torch.distributions.Beta(a, a).sample())
    else:
        lam = 1.0
    return lam, torch.randperm(batch)


def _old_mixup(x, y, alpha, c):
    """The supervised stage's mixup before this change, transcribed (its behaviour must not change)."""
    lam, perm = _old_lam_perm(alpha, x.shape[0])
    t = F.one_hot(y, c).to(x.dtype)
    return lam * x + (1.0 - lam) * x[perm], lam * t + (1.0 - lam) * t[perm]


def _old_cutmix(x, y, alpha, c):
    lam, perm = _old_lam_perm(alpha, x.shape[0])
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    t = F.one_hot(y, c).to(x.dtype)
    return out, lam * t + (1.0 - lam) * t[perm]


@pytest.mark.parametrize("fn,old,alpha", [("mixup", _old_mixup, 0.0), ("mixup", _old_mixup, 0.4),
                                          ("cutmix", _old_cutmix, 1.0)])  # fmt: skip
def test_mixup_and_cutmix_draws_equal_the_transcription(fn, old, alpha):
    """A mix drawn and applied as a stage does (sample_*, one_hot, mix_tensors) equals the transcription."""
    x, y = torch.randn(6, 3, 7, 9), torch.randint(0, 5, (6,))
    for seed in range(10):
        torch.manual_seed(seed)
        a = old(x, y, alpha, 5)
        torch.manual_seed(seed)
        n = x.shape[0]
        mix = mixing.sample_mixup(n, alpha) if fn == "mixup" else mixing.sample_cutmix(n, alpha, x.shape[-2:])
        b = mixing.mix_tensors({"x": x, "y": mixing.one_hot(y, 5, x.dtype)}, mix)
        assert torch.equal(a[0], b["x"]) and torch.equal(a[1], b["y"])


def test_one_mix_applies_to_every_tensor_of_a_dict():
    torch.manual_seed(0)
    b = 5
    batch = {"x": torch.randn(b, 3, 8, 8), "y": F.one_hot(torch.arange(b), 5).float(),
             "meta": torch.randn(b, 4), "fmap": torch.randn(b, 2, 4, 4)}  # fmt: skip
    mix = MixParams(0.3, torch.tensor([4, 3, 2, 1, 0]))
    out = mix_tensors(batch, mix)
    for k, t in batch.items():  # mixup: every tensor blended with the same lambda and partner
        torch.testing.assert_close(out[k], 0.3 * t + 0.7 * t[[4, 3, 2, 1, 0]])
    box = MixParams(box_lam((2, 0, 6, 4), (8, 8)), torch.tensor([1, 0, 2, 3, 4]), box=(2, 0, 6, 4))
    out = mix_tensors(batch, box)
    assert box.lam == 0.75 and box.area == 0.25
    x = out["x"]
    assert torch.equal(x[0, :, 0:4, 2:6], batch["x"][1, :, 0:4, 2:6])  # the partner's same region (CutMix)
    assert torch.equal(x[0, :, 4:, :], batch["x"][0, :, 4:, :])  # outside the box: untouched
    assert torch.equal(out["fmap"][0, :, 0:2, 1:3], batch["fmap"][1, :, 0:2, 1:3])  # box rescaled to the 4x4 map
    assert torch.equal(out["fmap"][0, :, 2:, :], batch["fmap"][0, :, 2:, :])
    torch.testing.assert_close(out["meta"], 0.75 * batch["meta"] + 0.25 * batch["meta"][[1, 0, 2, 3, 4]])
    assert not torch.equal(batch["x"], x)  # inputs are not modified in place
    with pytest.raises(TypeError, match="one-hot"):
        mix_tensors({"y": torch.arange(3)}, MixParams(0.5, torch.arange(3)))


@pytest.mark.parametrize(
    "size,cut,centre,box",
    [
        ((32, 32), 0.5, (0, 0), (0, 0, 8, 8)),  # clipped at the top-left border
        ((32, 32), 0.5, (31, 31), (23, 23, 32, 32)),  # clipped at the bottom-right border
        ((32, 32), 7 / 32, (16, 16), (13, 13, 19, 19)),  # odd side 7: half extent 3, the box is 6 wide
        ((5, 7), 0.6, (2, 3), (1, 1, 5, 3)),  # non-square odd image: cut_h = 3, cut_w = 4
        ((32, 32), 0.01, (10, 10), (10, 10, 10, 10)),  # side 0: empty box
    ],
)
def test_box_edge_cases(size, cut, centre, box):
    assert cutmix_box(size, cut, *centre) == box
    x1, y1, x2, y2 = box
    assert box_lam(box, size) == 1.0 - (x2 - x1) * (y2 - y1) / (size[0] * size[1])


def test_sampled_boxes_stay_inside_and_lambda_is_the_clipped_area():
    torch.manual_seed(0)
    for _ in range(200):
        x1, y1, x2, y2 = sample_paste_box((13, 9), 0.5)
        assert 0 <= x1 <= x2 <= 9 and 0 <= y1 <= y2 <= 13
        assert (x2 - x1) * (y2 - y1) <= 0.5 * 13 * 9 + 1e-9  # area ratio ~ U(0, alpha) before clipping
        mix = sample_cutmix(1, 1.0, (13, 9))  # batch of 1
        assert mix.perm.tolist() == [0] and mix.lam == box_lam(mix.box, (13, 9))
    assert sample_mix(MixConfig(kind="none"), 4, (8, 8)) is None
    assert sample_mix(MixConfig(kind="mixup", alpha=0.4, prob=0.0), 4, (8, 8)) is None


def _loop_recursive_mix(x, y, hx, hy, box):
    """Independent RecursiveMix paste: per-pixel nearest-neighbour resize (src = floor(dst * in / out))."""
    x1, y1, x2, y2 = box
    out = x.clone()
    h, w = y2 - y1, x2 - x1
    for b in range(x.shape[0]):
        for i in range(h):
            for j in range(w):
                si, sj = (i * hx.shape[2]) // h, (j * hx.shape[3]) // w
                out[b, :, y1 + i, x1 + j] = hx[b, :, si, sj]
    lam = 1.0 - h * w / (x.shape[2] * x.shape[3])
    return out, lam * y + (1 - lam) * hy[: x.shape[0]], lam


@pytest.mark.parametrize("shape,box", [((3, 2, 8, 8), (2, 1, 7, 4)), ((1, 3, 5, 7), (0, 1, 3, 5)),
                                       ((2, 1, 6, 6), (3, 3, 3, 3))])  # fmt: skip
def test_recursive_mix_against_a_loop_and_by_hand(shape, box):
    torch.manual_seed(1)
    x, hx = torch.randn(shape), torch.randn(shape[0] + 2, *shape[1:])  # the history may hold more rows
    y, hy = F.softmax(torch.randn(shape[0], 4), 1), F.softmax(torch.randn(shape[0] + 2, 4), 1)
    got = recursive_mix(x, y, hx, hy, box)
    want = _loop_recursive_mix(x, y, hx, hy, box)
    assert torch.equal(got[0], want[0]) and got[2] == want[2]
    torch.testing.assert_close(got[1], want[1])
    # by hand: a 4x4 history image shrunk into a 2x2 box keeps rows/cols 0 and 2; lam = 1 - 4/16
    img, hist = torch.zeros(1, 1, 4, 4), torch.arange(16.0).reshape(1, 1, 4, 4)
    out, ym, lam = recursive_mix(img, torch.tensor([[1.0, 0.0]]), hist, torch.tensor([[0.0, 1.0]]), (1, 1, 3, 3))
    assert lam == 0.75 and ym.tolist() == [[0.75, 0.25]]
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 2, 0], [0, 8, 10, 0], [0, 0, 0, 0]]
    # bilinear uses align_corners=True: a 2x2 image stretched to 3x3 keeps its corners
    two = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    out, _, _ = recursive_mix(torch.zeros(1, 1, 3, 3), ym, two, ym, (0, 0, 3, 3), mode="bilinear")
    assert out[0, 0].tolist() == [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]]


def _ref_box(size, cut_rat, rng):
    """The reference ``rand_bbox`` (CutMix; RecursiveMix utils.py before ed381bf2), transcribed with numpy: it calls
    the first image axis W and the second H; the box spans rows x1:x2 and columns y1:y2 (the area is the same)."""
    w, h = size
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    cx, cy = rng.integers(w), rng.integers(h)
    x1, y1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cy - cut_h // 2, 0, h)
    x2, y2 = np.clip(cx + cut_w // 2, 0, w), np.clip(cy + cut_h // 2, 0, h)
    return (x2 - x1) * (y2 - y1) / (w * h)


def _rm_reference(x, old_x, cut_rat, first, second, commit):
    """implus/RecursiveMix-pytorch utils.py ``recursive_mix`` with its two random draws given (``first`` =
    randint(W), ``second`` = randint(H)), transcribed with numpy at the current HEAD ed381bf2 (H = size[2], W =
    size[3]) and the superseded 6364e11 (W = size[2], H = size[3]: it pastes into rows bbx1:bbx2). Returns the
    mixed images and the box handed to ``roi_align`` (x = column axis), one per sample."""
    h, w = (x.shape[2], x.shape[3]) if commit == "ed381bf" else (x.shape[3], x.shape[2])
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    cx, cy = first, second
    bbx1, bby1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cy - cut_h // 2, 0, h)
    bbx2, bby2 = np.clip(cx + cut_w // 2, 0, w), np.clip(cy + cut_h // 2, 0, h)
    x = x.clone()
    if commit == "ed381bf":
        size = (int(bby2 - bby1), int(bbx2 - bbx1))
        if size != (0, 0):
            x[:, :, bby1:bby2, bbx1:bbx2] = F.interpolate(old_x[: x.shape[0]], size=size, mode="nearest")
    else:
        size = (int(bbx2 - bbx1), int(bby2 - bby1))
        if size != (0, 0):
            x[:, :, bbx1:bbx2, bby1:bby2] = F.interpolate(old_x[: x.shape[0]], size=size, mode="nearest")
    return x, tuple(int(v) for v in (bbx1, bby1, bbx2, bby2))


@pytest.mark.parametrize("commit,kind", [("ed381bf", "pasted"), ("6364e11", "transposed")])
def test_recursive_mix_paste_and_roi_box_follow_the_reference_commits(commit, kind):
    """On a non-square image, for fixed draws: ed381bf2 (HEAD) pastes where ssl_kd pastes and pools that box
    (`roi_box: pasted`, the default); 6364e11 pastes into the same region (its axes are renamed consistently) but hands
    roi_align the swapped coordinates (`roi_box: transposed`)."""
    from ssl_kd.stages.recursivemix import RecursiveMixConfig, roi_box

    assert RecursiveMixConfig.model_fields["roi_box"].default == "pasted"
    torch.manual_seed(0)
    size = (6, 10)
    x, old = torch.randn(2, 3, *size), torch.randn(3, 3, *size)
    y = torch.eye(2, 4)
    for cut_rat in (0.4, 0.5, 0.71, 0.05):  # (0.3 gives a 0 x 2 box: the reference's interpolate raises there)
        for first, second in ((0, 0), (3, 2), (5, 5), (9, 1) if commit == "ed381bf" else (1, 9)):
            want_x, want_roi = _rm_reference(x, old, cut_rat, first, second, commit)
            if commit == "ed381bf":  # first draw: the column centre, second: the row centre
                box = cutmix_box(size, cut_rat, second, first)
            else:  # first draw: the row centre
                box = cutmix_box(size, cut_rat, first, second)
            got_x, _, _ = recursive_mix(x, y, old, torch.eye(3, 4), box)
            assert torch.equal(got_x, want_x), (cut_rat, first, second)
            if box[2] > box[0]:  # the reference calls the RoI head only when something is pasted (lam < 1)
                assert roi_box(box, kind) == want_roi


@pytest.mark.parametrize("kind,size", [("cutmix", (32, 32)), ("paste", (32, 32)), ("paste", (13, 9))])
def test_box_areas_follow_the_reference_sampler(kind, size):
    """The distribution of the pasted area (= 1 - lam, the label weight of the partner) against an independent numpy
    transcription of the reference sampler: CutMix cut ratio sqrt(1 - Beta(1, 1)), RecursiveMix sqrt(U(0, 0.5))."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    n = 6000
    if kind == "cutmix":
        ours = [1.0 - sample_cutmix(2, 1.0, size).lam for _ in range(n)]
        ref = [_ref_box(size, math.sqrt(1.0 - rng.beta(1.0, 1.0)), rng) for _ in range(n)]
    else:
        ours = [1.0 - box_lam(sample_paste_box(size, 0.5), size) for _ in range(n)]
        ref = [_ref_box(size, math.sqrt(rng.uniform(0, 0.5)), rng) for _ in range(n)]
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(ours, q) - np.quantile(ref, q)) < 0.03, q
    assert abs(np.mean(ours) - np.mean(ref)) < 0.01
    # for scale: the mean share of a batch that CutMix (alpha 1) and RecursiveMix (alpha 0.5) give to the partner
    assert (0.25 < np.mean(ours) < 0.33) if kind == "cutmix" else (0.12 < np.mean(ours) < 0.2)


def _dmkd_reference(data, shuffled, lam, cx, cy):
    """zhengli97/DM-KD@bbab9ce8 helper/loops.py ``cutmix`` with its draws given (lam ~ Beta, cx ~ U(0, W),
    cy ~ U(0, H)), transcribed with numpy: returns the mixed batch and (x0, y0, x1, y1)."""
    image_h, image_w = data.shape[2:]
    w = image_w * np.sqrt(1 - lam)
    h = image_h * np.sqrt(1 - lam)
    x0 = int(np.round(max(cx - w / 2, 0)))
    x1 = int(np.round(min(cx + w / 2, image_w)))
    y0 = int(np.round(max(cy - h / 2, 0)))
    y1 = int(np.round(min(cy + h / 2, image_h)))
    data = data.clone()
    data[:, :, y0:y1, x0:x1] = shuffled[:, :, y0:y1, x0:x1]
    return data, (x0, y0, x1, y1)


@pytest.mark.parametrize(
    "size,lam,cx,cy",
    [
        ((32, 32), 1 - (5 / 32) ** 2, 10.0, 20.25),  # side 5: edges 7.5 -> 8 and 12.5 -> 12 (halves to even)
        ((32, 32), 1 - (5 / 32) ** 2, 10.25, 3.5),  # 7.75 -> 8, 12.75 -> 13; rows 1.0 .. 6.0
        ((24, 40), 0.3, 0.3, 23.9),  # non-square, clipped at the left and bottom edges
        ((24, 40), 0.93, 39.99, 0.01),  # clipped at the right and top edges
        ((32, 32), 1.0, 16.6, 16.4),  # side 0: x0 = x1 = 17, y0 = y1 = 16: nothing pasted
        ((32, 32), 0.9987, 7.4, 9.1),  # side 1.15: a 1 x 1 box (CutMix's int + halving gives side 0)
    ],
)
def test_dmkd_box_against_dm_kd_cutmix_for_fixed_draws(size, lam, cx, cy):
    torch.manual_seed(0)
    x = torch.randn(3, 2, *size)
    perm = torch.tensor([2, 0, 1])
    want_x, (x0, y0, x1, y1) = _dmkd_reference(x, x[perm], lam, cx, cy)
    box = mixing.dmkd_box(size, math.sqrt(1 - lam), cy, cx)
    assert box == (x0, y0, x1, y1)
    got = mix_tensors({"x": x}, MixParams(box_lam(box, size), perm, box))["x"]
    assert torch.equal(got, want_x)


def test_dmkd_box_sampler_draws_the_reference_box():
    """sample_cutmix(box='dmkd') = DM-KD's box at the draws it makes from torch's generator (lam, perm, cx, cy)."""
    size = (24, 40)
    for seed in range(20):
        torch.manual_seed(seed)
        mix = sample_mix(MixConfig(kind="cutmix", alpha=0.25, box="dmkd"), 4, size)
        torch.manual_seed(seed)
        a = torch.tensor(0.25)
        lam = float(torch.distributions.Beta(a, a).sample())
        perm = torch.randperm(4)
        cx, cy = (torch.rand(2, dtype=torch.float64) * torch.tensor([40.0, 24.0], dtype=torch.float64)).tolist()
        _, (x0, y0, x1, y1) = _dmkd_reference(torch.zeros(1, 1, *size), torch.zeros(1, 1, *size), lam, cx, cy)
        assert mix.box == (x0, y0, x1, y1) and torch.equal(mix.perm, perm)
        assert mix.lam == 1 - max(0, x1 - x0) * max(0, y1 - y0) / (24 * 40)


@pytest.mark.parametrize("box,area,empty", [("cutmix", 0.281, 0.135), ("dmkd", 0.301, 0.077)])
def test_cutmix_box_statistics_at_alpha_0_25(box, area, empty):
    """Over many draws on 32 x 32 at alpha 0.25 (DM-KD's CutMix): the mean pasted area and the share of batches
    with nothing pasted, against figures measured with numpy transcriptions of each reference sampler (CutMix's
    rand_bbox: 0.281 and 13.5 %; DM-KD's: 0.301 and 7.7 %). 20000 draws: standard errors about 0.0025 and 0.002."""
    torch.manual_seed(0)
    cfg = MixConfig(kind="cutmix", alpha=0.25, box=box)
    areas = np.array([sample_mix(cfg, 2, (32, 32)).area for _ in range(20000)])
    assert abs(areas.mean() - area) < 0.01
    assert abs((areas == 0).mean() - empty) < 0.012


@pytest.mark.parametrize("size", [(32, 32), (13, 9), (5, 5)])
def test_partner_label_weight_equals_its_pixel_share(size):
    """Count pixels: each image is a constant with its own value, so the share of pixels that came from the partner
    can be read off the mixed image and must equal the label weight the mix gives the partner's class."""
    torch.manual_seed(3)
    b, c = 6, 6
    x = torch.arange(1.0, b + 1).view(b, 1, 1, 1).expand(b, 3, *size).contiguous()
    y = F.one_hot(torch.arange(b), c).float()
    for _ in range(30):
        mix = sample_cutmix(b, 1.0, size)
        out = mix_tensors({"x": x, "y": y}, mix)
        for i, j in enumerate(mix.perm.tolist()):
            if i != j:
                share = (out["x"][i] == j + 1).float().mean().item()
                assert math.isclose(out["y"][i, j].item(), share, abs_tol=1e-6)
                assert math.isclose(out["y"][i, i].item(), 1.0 - share, abs_tol=1e-6)
        hist_x = torch.full((b + 1, 3, *size), 100.0)  # the previous batch (one more row than this one)
        hist_y = F.one_hot(torch.full((b + 1,), c - 1), c).float() * 0.5 + 0.5 * F.one_hot(torch.zeros(b + 1).long(), c)
        box = sample_paste_box(size, 0.5)
        xm, ym, lam = recursive_mix(x, y, hist_x, hist_y, box)
        for i in range(b):
            share = (xm[i] == 100.0).float().mean().item()
            assert math.isclose(1.0 - lam, share, abs_tol=1e-6)
            torch.testing.assert_close(ym[i], lam * y[i] + share * hist_y[0])
            assert math.isclose(ym[i].sum().item(), 1.0, abs_tol=1e-6)


# ================================================================================================ history
def test_history_detaches_resets_and_round_trips():
    h = BatchHistory("epoch")
    assert h.empty
    x = torch.ones(2, 3, requires_grad=True)
    y = x * 2
    h.update(x=y, z=x)
    assert not h["x"].requires_grad and torch.equal(h["x"], y.detach())
    y.data.fill_(7.0)  # later in-place edits of the source do not reach the history
    assert h["x"].max() == 2
    state = h.state_dict()
    h.on_epoch_start()
    assert h.empty
    h.load_state_dict(state)
    assert torch.equal(h["z"], torch.ones(2, 3))
    never = BatchHistory("never")
    never.update(x=torch.zeros(1))
    never.on_epoch_start()
    assert not never.empty
    with pytest.raises(ValueError, match="epoch"):
        BatchHistory("step")


# ================================================================================================ models
def test_multi_exit_copies_later_stages_fresh_and_reports_every_exit():
    torch.manual_seed(0)
    m = create_model("multi_exit", 7, backbone="cifar_resnet18", backbone_kwargs={"width": 4, "stem_relu": False})
    assert isinstance(m, MultiExit) and m.exit_after == (1, 2, 3)
    assert m.exit_names == ("exit1", "exit2", "exit3", "backbone")
    # branch k = fresh copies of stages k+1..4 (same shapes, own weights), its own fc
    for k, branch in zip((1, 2, 3), m.branches):
        assert len(branch.stages) == 4 - k
        for mine, theirs in zip(branch.stages, list(m.backbone.stages)[k:]):
            shapes = [p.shape for p in mine.parameters()]
            assert shapes == [p.shape for p in theirs.parameters()]
            assert not any(torch.equal(a, b) for a, b in zip(mine.parameters(), theirs.parameters()) if a.ndim > 1)
    assert len(m.backbone.stem) == 2  # MixSKD's ResNet-18: conv + BN, no ReLU
    x = torch.randn(3, 3, 32, 32)
    out = m.eval()(x)
    maps = m.exit_maps(out)
    assert [t.shape for t in maps] == [(3, 32, 4, 4)] * 4
    for z, fmap, name in zip(m.exit_logits(out), maps, m.exit_names):
        fc = m.fc if name == "backbone" else m.branches[m.exit_names.index(name)].fc
        torch.testing.assert_close(z, fc(fmap.mean((2, 3))))
    pred = m.predict({"x": x})
    assert list(pred) == ["backbone", "exit1", "exit2", "exit3"] and torch.equal(pred["backbone"], out.logits)
    # a WRN backbone: the exits copy its pre-pool BN + activation too
    w = create_model("multi_exit", 5, backbone="wrn_16_1", exits=[2])
    assert w.exit_after == (2,) and hasattr(w.branches[0], "bn") and len(w.branches[0].stages) == 1
    assert w(torch.randn(2, 3, 32, 32)).aux["exit2"].shape == (2, 5)


STAGE_BASED = ["cifar_resnet18", "resnet8", "resnet8x4", "wrn_16_1", "wrn_28_2", "resnet18", "shufflenetv2",
               "cnn_small"]  # fmt: skip


@pytest.mark.parametrize("name", STAGE_BASED)
def test_stage_based_models_compute_what_multi_exit_assumes(name):
    """A multi-exit model runs its backbone as stem -> stages -> pre_pool itself: with the same weights its
    backbone exit must equal the model's own forward (this pins the stage-based contract of every such model)."""
    torch.manual_seed(0)
    kwargs = {"width": 4} if name == "cifar_resnet18" else {}
    plain = create_model(name, 6, **kwargs).eval()
    multi = create_model("multi_exit", 6, backbone=name, backbone_kwargs=kwargs, exits=[1]).eval()
    multi.backbone.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = plain(x, return_feats=True), multi(x, return_feats=True)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.feat, b.feat)
    assert all(torch.equal(u, v) for u, v in zip(a.feats, b.feats))
    assert b.aux["exit1"].shape == (2, 6) and b.aux["exit1_map"].shape == b.aux["backbone_map"].shape


def test_multi_exit_refuses_what_it_cannot_build():
    with pytest.raises(UserError, match="not stage-based"):
        create_model("multi_exit", 5, backbone="mlp")
    with pytest.raises(UserError, match="exits"):
        create_model("multi_exit", 5, backbone="resnet8", exits=[4])  # 3 stages: 3 is the stride-1 extra exit
    with pytest.raises(UserError, match="cannot build an extra stage"):
        create_model("multi_exit", 5, backbone="mobilenetv1", exits=[4])
    with pytest.raises(UserError, match="exit_label_factor"):
        create_model("multi_exit", 5, backbone="resnet8", exit_label_factor=0)
    with pytest.raises(UserError, match="Unknown model"):
        create_model("multi_exit", 5, backbone="resnet99")


def test_roi_features_by_hand_and_batch_of_one():
    fmap = torch.arange(16.0).reshape(1, 1, 4, 4)
    # the whole 8x8 image on a 4x4 map (scale 1/2, aligned): bilinear samples at the 16 pixel centres
    assert roi_features(fmap, (0, 0, 8, 8), (8, 8)).tolist() == [[7.5]]
    # the top-left quarter: pixels 0, 1, 4, 5
    assert roi_features(fmap, (0, 0, 4, 4), (8, 8)).tolist() == [[2.5]]
    two = torch.cat([fmap, fmap + 1])
    assert roi_features(two, (0, 0, 4, 4), (8, 8)).tolist() == [[2.5], [3.5]]  # one box for every image


def test_self_teacher_and_critics():
    torch.manual_seed(0)
    maps = [torch.randn(2, 3, 2, 2) for _ in range(4)]
    t = SelfTeacher(4, 3, 5)
    want = t.fc(F.conv2d(torch.cat(maps, 1), t.conv.weight).mean((2, 3)))
    torch.testing.assert_close(t(maps), want)
    hat = [torch.randn(2, 3, 2, 2, requires_grad=True) for _ in range(2)]
    tilde = [torch.randn(2, 3, 2, 2) for _ in range(2)]
    for adversarial in (False, True):
        critics = FeatureCritics([3, 3], hidden=4, adversarial=adversarial)
        loss = critics(hat, tilde)
        want = 0.0
        for d, a, b in zip(critics.critics, hat, tilde):  # BCE over [interp -> (1, 0); mixed -> (0, 1)]
            logits = d(torch.cat([a, b]).mean((2, 3)))
            target = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2)
            want += F.binary_cross_entropy_with_logits(logits, target)
        torch.testing.assert_close(loss, want)
        g = torch.autograd.grad(loss, hat[0], retain_graph=True)[0]
        g_want = torch.autograd.grad(want, hat[0])[0]
        torch.testing.assert_close(g, -g_want if adversarial else g_want)  # the GRL flips the features' gradient


# ================================================================================================ losses
def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, LN(3.0)]])
    assert math.isclose(soft_cross_entropy(logits, torch.tensor([[0.5, 0.5]])).item(),
                        -(0.5 * LN(0.25) + 0.5 * LN(0.75)), rel_tol=1e-6)  # fmt: skip


def _kl_loop(s, t, temp):
    """T^2 * mean over rows of sum_c p_t (log p_t - log p_s), written with loops."""
    total = 0.0
    for i in range(s.shape[0]):
        ps = [math.exp(v / temp) for v in s[i].tolist()]
        pt = [math.exp(v / temp) for v in t[i].tolist()]
        zs, zt = sum(ps), sum(pt)
        total += sum((b / zt) * (LN(b / zt) - LN(a / zs)) for a, b in zip(ps, pt))
    return temp * temp * total / s.shape[0]


def _ce_loop(z, label):
    row = z.tolist()
    return -(row[label] - LN(sum(math.exp(v) for v in row)))


def _mixskd_loop(clean, mixed, th, tt, fh, ft, y, perm, lam, temp):
    """MixSKD's losses (winycg/Self-KD-Lib main_mixskd_cifar.py) term by term with Python loops (not the
    implementation's tensor code)."""
    b, k = len(y), len(clean)
    y, perm = y.tolist(), perm.tolist()
    hat = [torch.stack([lam * z[i] + (1 - lam) * z[perm[i]] for i in range(b)]) for z in clean]
    cls = sum(_ce_loop(z[i], y[i]) for z in clean for i in range(b)) / b
    mix = 0.0
    for q in [*mixed, th, tt]:
        mix += sum(lam * _ce_loop(q[i], y[i]) + (1 - lam) * _ce_loop(q[i], y[perm[i]]) for i in range(b)) / b
    div = _kl_loop(hat[-1], tt, temp) + _kl_loop(mixed[-1], th, temp)
    for j in range(k - 1):
        div += _kl_loop(hat[j], mixed[j], temp) + _kl_loop(mixed[j], hat[j], temp)
    fea = sum(((a - c) ** 2).sum().item() / a.numel() for a, c in zip(fh, ft))
    return {"cls": cls, "mix": mix, "div": div, "fea": fea}


def test_mixskd_losses_against_a_loop_transcription():
    torch.manual_seed(3)
    b, c, k = 5, 7, 4
    clean = [torch.randn(b, c) for _ in range(k)]
    mixed = [torch.randn(b, c) for _ in range(k)]
    th, tt = torch.randn(b, c), torch.randn(b, c)
    fh, ft = [torch.randn(b, 3, 2, 2) for _ in range(k)], [torch.randn(b, 3, 2, 2) for _ in range(k)]
    y, perm, lam = torch.randint(0, c, (b,)), torch.randperm(b), 0.37
    got = mixskd_losses(clean, mixed, th, tt, fh, ft, y, perm, lam, temperature=3.0)
    want = _mixskd_loop(clean, mixed, th, tt, fh, ft, y, perm, lam, 3.0)
    assert set(got) == {"cls", "mix", "div", "fea"}
    for key, v in want.items():
        assert math.isclose(got[key].item(), v, rel_tol=1e-5), key


def test_mixskd_losses_by_hand_and_targets_detached():
    # one exit, uniform logits: cls = ln 2; fea = mean((1 - 0)^2) = 1; mix = ln 2 (exit) + ln 2 (t^) + the mixup CE
    # of t~ = [0, 3 ln 3] (softmax [1/28, 27/28]) on labels (0, 1) / (1, 0) with lam 1/2: (ln 28 + ln(28/27)) / 2
    z = torch.zeros(2, 2)
    y, perm = torch.tensor([0, 1]), torch.tensor([1, 0])
    t_tilde = torch.tensor([[0.0, 3 * LN(3.0)]] * 2, requires_grad=True)  # softmax(t~/3) = [1/4, 3/4]
    t_hat = torch.zeros(2, 2, requires_grad=True)
    mixed = torch.zeros(2, 2, requires_grad=True)
    out = mixskd_losses([z], [mixed], t_hat, t_tilde, [torch.ones(2, 1, 1, 1)], [torch.zeros(2, 1, 1, 1)], y, perm, 0.5)
    assert math.isclose(out["cls"].item(), LN(2), rel_tol=1e-6)
    assert math.isclose(out["mix"].item(), 2 * LN(2) + 0.5 * (LN(28) + LN(28 / 27)), rel_tol=1e-6)
    # KL_3(z^ <- t~) with z^ uniform: 9 (1/4 ln(1/2) + 3/4 ln(3/2)); KL_3(z~ <- t^) = 0
    assert math.isclose(out["div"].item(), 9 * (0.25 * LN(0.5) + 0.75 * LN(1.5)), rel_tol=1e-5)
    assert out["fea"].item() == 1.0
    out["div"].backward()
    assert t_tilde.grad is None and t_hat.grad is None  # every KL target is detached
