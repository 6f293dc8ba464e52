"""Filter pruning's pure pieces against an independent transcription of the references (masks, codebooks, schedules),
the component on a model, and the export to a physically smaller network."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import random_bn
from torch import nn

from ssl_kd.callbacks.prune import Prune, decay_schedule, hard_schedule
from ssl_kd.errors import UserError
from ssl_kd.models import create_model, create_model_from_spec, model_spec
from ssl_kd.prune import (
    FilterPruner,
    PruneConfig,
    asfp_keep_ratio,
    asrfp_decay,
    bn_factors,
    count_flops,
    export_pruned,
    filter_norm_mask,
    ghfp_hard_fraction,
    ghfp_hard_fraction_cosine,
    ghfp_masks,
    global_masks,
    mask_factors,
)


# ------------------------------------------------------------------ independent transcription of the reference
def ref_norms(w: torch.Tensor) -> list[float]:
    return [math.sqrt(sum(v * v for v in w[i].flatten().tolist())) for i in range(w.shape[0])]


def ref_codebooks(w: torch.Tensor, rate: float, lambda_hard: float) -> tuple[list[int], list[int]]:
    """PGMPF `get_filter_codebook_gradient_decay` per filter: (codebook, hard_codebook), 0 = pruned / hard."""
    n = w.shape[0]
    norms = ref_norms(w)
    order = sorted(range(n), key=lambda i: (norms[i], i))
    codebook, hard = [1] * n, [1] * n
    for i in order[: int(n * (1 - rate))]:
        codebook[i] = 0
    for i in order[: int(n * (1 - rate) * lambda_hard)]:
        hard[i] = 0
    return codebook, hard


def ref_do_mask(w: torch.Tensor, codebook, hard, d: float) -> torch.Tensor:
    """PGMPF `do_mask` on one conv weight, element by element."""
    out = w.clone()
    for i in range(w.shape[0]):
        f = codebook[i] if abs(d) < 1e-4 else codebook[i] + d * (1 - codebook[i]) * hard[i]
        out[i] = w[i] * f
    return out


@pytest.mark.parametrize("shape,rate", [((16, 3, 3, 3), 0.6), ((10, 4, 3, 3), 0.7), ((64, 32, 1, 1), 0.3)])
def test_filter_norm_mask_matches_the_reference_selection(shape, rate):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    codebook, _ = ref_codebooks(w, rate, 0.0)
    assert filter_norm_mask(w, rate).tolist() == [bool(c) for c in codebook]
    assert int((~filter_norm_mask(w, rate)).sum()) == int(shape[0] * (1 - rate))


def test_filter_norm_mask_by_hand():
    w = torch.zeros(5, 1, 2, 1)
    for i, norm in enumerate([3.0, 0.5, 2.0, 0.1, 1.0]):
        w[i, 0, 0, 0] = norm
    assert filter_norm_mask(w, 0.6).tolist() == [True, False, True, False, True]  # int(5 * 0.4) = 2 dropped
    assert filter_norm_mask(w, 1.0).all()
    assert filter_norm_mask(torch.randn(10, 1, 1, 1), 0.9).all()  # reference: int(10 * 0.09999...) = 0


@pytest.mark.parametrize("rate,lam", [(0.6, 0.95), (0.6, 0.3), (0.4, 1.0), (0.7, 0.578125)])
def test_ghfp_masks_match_the_reference_codebooks(rate, lam):
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(7))
    codebook, hard = ref_codebooks(w, rate, lam)
    kept, h = ghfp_masks(w, rate, lam)
    assert kept.tolist() == [bool(c) for c in codebook]
    assert h.tolist() == [not c for c in hard]
    assert not (kept & h).any()


def test_ghfp_hard_count_floors_the_product_once():
    # 16 filters, keep 0.6: 6.4 -> 6 pruned; lambda 0.95: int(6.4 * 0.95) = int(6.08) = 6 hard (not int(6 * 0.95) = 5)
    kept, hard = ghfp_masks(torch.randn(16, 2, 1, 1), 0.6, 0.95)
    assert int((~kept).sum()) == 6 and int(hard.sum()) == 6


def test_mask_and_bn_factors_match_do_mask():
    w = torch.randn(12, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    codebook, hard = ref_codebooks(w, 0.5, 0.5)
    kept, h = torch.tensor([bool(c) for c in codebook]), torch.tensor([not c for c in hard])
    for d in (0.0, 5e-5, 0.3, 1.0):
        ours = w * mask_factors(kept, h, d).float().view(-1, 1, 1, 1)
        assert torch.equal(ours, ref_do_mask(w, codebook, hard, d))
        # BN weight/bias: a * (codebook + d (1 - codebook)), also for hard channels and below the threshold
        assert bn_factors(kept, d).tolist() == [c + d * (1 - c) for c in codebook]


def test_global_masks_match_a_loop():
    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(8, 3, 3, 3, generator=g), 3 * torch.randn(16, 8, 3, 3, generator=g), torch.randn(4, 16, 1, 1)]
    ws[2] = ws[2] * 0.01  # a layer of tiny filters: a global ratio would empty it but for the keep-one rule
    kept, hard = global_masks(ws, 0.5, 0.5)
    # loop: visit all filters by (norm, position), drop while the budget lasts and the layer keeps one
    items = sorted((ref_norms(w)[i], pos) for pos, (w, i) in enumerate((w, i) for w in ws for i in range(len(w))))
    owner = [layer for layer, w in enumerate(ws) for _ in range(len(w))]
    left, budget, drop = [len(w) for w in ws], int(28 * 0.5), set()
    for _, pos in items:
        if budget and left[owner[pos]] > 1:
            drop.add(pos)
            left[owner[pos]] -= 1
            budget -= 1
    assert [not k for layer in kept for k in layer.tolist()] == [pos in drop for pos in range(28)]
    assert int(kept[2].sum()) == 1
    for k, h in zip(kept, hard):
        assert int(h.sum()) == int(int((~k).sum()) * 0.5) and not (k & h).any()


def test_schedule_functions_by_hand():
    assert ghfp_hard_fraction(0, 4) == 1 - (3 / 4) ** 3 == 37 / 64
    assert ghfp_hard_fraction(3, 4) == 1.0
    d0, sigma, E = 1.0, 1e-3, 10
    assert asrfp_decay(0, E, d0, sigma) == 1.0
    assert asrfp_decay(5, E, d0, sigma) == pytest.approx(math.sqrt(sigma / (1 + 0.01 * sigma)), rel=1e-12)
    assert asrfp_decay(E, E, 0.5, sigma) == pytest.approx(0.5 * sigma / (0.5 + 0.01 * sigma), rel=1e-12)
    assert asrfp_decay(9, 10, 1.0, 1e-5) == 0.0  # 1e-4.5 < 1e-4: a pruned filter is zeroed
    assert ghfp_hard_fraction_cosine(0, 10) == 0.0 and ghfp_hard_fraction_cosine(9, 10) == 1.0
    assert ghfp_hard_fraction_cosine(3, 10) == pytest.approx((1 - math.cos(math.pi * 3 / 9)) / 2)


class _Stage:
    def __init__(self, cfg: PruneConfig, total_epochs: int, spe: int = 7) -> None:
        from ssl_kd.engine.stage import Progress

        self.name, self.cfg = "s", type("C", (), {"prune": cfg, "train": ["net"]})()
        self.progress = Progress(0, total_epochs * spe, spe)


def _callback(cfg: PruneConfig, total_epochs: int) -> Prune:
    runner = type("R", (), {"models": {"net": create_model("resnet8", 10)}})()
    return Prune(runner, _Stage(cfg, total_epochs))


@pytest.mark.parametrize("epochs", [5, 30, 200])
def test_the_schedules_equal_the_pure_functions(epochs):
    """GHFP's lambda_e is the `cubic` scheduled scalar, ASRFP's d_e the `exponential` one (with the 1e-4 floor)."""
    ghfp = _callback(PruneConfig(method="ghfp"), epochs)
    asrfp = _callback(PruneConfig(method="asrfp", decay=0.8, sigma=1e-5), epochs)
    cosine = _callback(PruneConfig(method="ghfp", hard_ramp="cosine", hard_full_from=0.9), epochs)
    for e in range(epochs):
        assert ghfp.values(e)[0] == pytest.approx(ghfp_hard_fraction(e, epochs), rel=1e-12, abs=1e-15)
        assert asrfp.values(e)[1] == pytest.approx(asrfp_decay(e, epochs, 0.8, 1e-5), rel=1e-12)
        assert cosine.values(e)[0] == pytest.approx(ghfp_hard_fraction_cosine(e, epochs, 0.9), rel=1e-12, abs=1e-15)
        assert ghfp.values(e)[1] == 0.0 and asrfp.values(e)[0] == 0.0  # ghfp's soft filters: zero; asrfp: no hard
    assert decay_schedule(PruneConfig(method="srfp", decay=0.3), epochs).at(5, 1, epochs) == 0.3
    assert hard_schedule(PruneConfig(method="sfp"), epochs) is None


def test_reference_windows():
    cb = _callback(PruneConfig(method="ghfp", decay=1.0, decay_off_from=0.8, hard_full_from=0.9), 10)
    assert [cb.values(e)[1] > 0 for e in range(10)] == [True] * 8 + [False] * 2
    assert cb.values(8)[0] < 1.0 and cb.values(9)[0] == 1.0


def ref_comp_rates(rate: float, epochs: int, poly: bool) -> list[float]:
    """PGMPF `pruning_train_soft_hard_prune_bn.py` (is_asfp = True), the `comp_rate` of each epoch's mask step,
    transcribed loop for loop (D = 1/8, asymptotic_k = ln 4 / (D E); r itself from 0.9 E)."""
    import numpy as np

    asymptotic_k = np.log(4) / (1 / 8 * epochs)
    out = []
    for epoch in range(epochs):
        comp_rate = rate + (1 - rate) * np.exp(-asymptotic_k * epoch)
        if poly:
            comp_rate = 1.0 - (1 - rate) * (1.0 - (1.0 - (epoch + 1.0) / (epochs + 1e-7)) ** 3)
        if epoch >= epochs * 9 / 10:
            comp_rate = rate
        out.append(float(comp_rate))
    return out


def test_asfp_keep_ratio_by_hand():
    assert asfp_keep_ratio(0, 8, 0.6) == 1.0  # ASFP starts with every filter kept
    assert asfp_keep_ratio(1, 8, 0.6) == pytest.approx(0.6 + 0.4 / 4, rel=1e-15)  # k = ln 4 at E = 8
    assert asfp_keep_ratio(7, 8, 0.6) == pytest.approx(0.6 + 0.4 * 4.0**-7, rel=1e-15)  # 7 < 0.9 * 8
    assert asfp_keep_ratio(9, 10, 0.6) == 0.6  # 9 >= 0.9 * 10: the target
    assert asfp_keep_ratio(0, 4, 0.6, "poly") == pytest.approx(1 - 0.4 * (1 - 0.75**3), rel=1e-7)
    assert int(20 * (1 - asfp_keep_ratio(1, 4, 0.6, "poly"))) == 6  # 1 - 0.65 would floor to 7: E + 1e-7 kept


@pytest.mark.parametrize("epochs", [4, 10, 33, 200])
@pytest.mark.parametrize("rate", [0.6, 0.7])
@pytest.mark.parametrize("poly", [False, True])
def test_asfp_keep_ratio_equals_the_reference_loop(epochs, rate, poly):
    ref = ref_comp_rates(rate, epochs, poly)
    ours = [asfp_keep_ratio(e, epochs, rate, "poly" if poly else "exp") for e in range(epochs)]
    assert ours == pytest.approx(ref, rel=1e-13)
    for n in (16, 20, 32, 64, 512):  # the floored counts the masks use: int(n (1 - comp_rate))
        assert [int(n * (1 - k)) for k in ours] == [int(n * (1 - k)) for k in ref]
    cb = _callback(PruneConfig(method="sfp", keep_ratio=rate, keep_ramp="poly" if poly else "exp"), epochs)
    assert [cb.keep(e) for e in range(epochs)] == ours
    assert _callback(PruneConfig(method="sfp", keep_ratio=rate), epochs).keep(0) == rate  # ramp off: constant


class _Runner:
    def __init__(self) -> None:
        self.models = {"net": random_bn(create_model("resnet8", 10))}
        self.stage = type("S", (), {"ema_models": {}})()
        self.records: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(record)


def test_asfp_first_mask_step_keeps_every_filter():
    runner = _Runner()
    cb = Prune(runner, _Stage(PruneConfig(method="ghfp", keep_ratio=0.5, keep_ramp="exp"), 8))
    cb._refresh(runner, 0, final=False)
    assert all(k.all() for k in cb.pruners["net"].kept.values())
    cb._refresh(runner, 7, final=True)  # 7 < 0.9 * 8: the reference's last step is still above the target
    assert runner.records[-1]["prune/keep"] == pytest.approx(0.5 + 0.5 * 4.0**-7)


@pytest.mark.parametrize("epochs", [3, 4, 5, 10])
def test_final_step_decay_follows_the_reference_window(epochs):
    """PGMPF sets d = 0 only in its window (e >= 0.8 E): with E <= 4 the last step (e = E - 1) keeps
    d0 exp(-a (E - 1)), a = -ln(sigma / (d0 + 0.01 sigma)) / E. Without a window, final_zero (ours) zeroes it."""
    sigma = 1e-3
    by_hand = (sigma / (1 + 0.01 * sigma)) ** ((epochs - 1) / epochs) if epochs - 1 < 0.8 * epochs else 0.0
    runner = _Runner()
    cb = Prune(runner, _Stage(PruneConfig(method="asrfp", decay=1.0, sigma=sigma, decay_off_from=0.8), epochs))
    assert cb.cfg.final_zero is False
    cb._refresh(runner, epochs - 1, final=True)
    assert runner.records[-1]["prune/decay"] == pytest.approx(by_hand, rel=1e-12, abs=0)
    no_window = Prune(runner, _Stage(PruneConfig(method="asrfp", decay=1.0, sigma=sigma), epochs))
    assert no_window.cfg.final_zero is True
    no_window._refresh(runner, epochs - 1, final=True)
    assert runner.records[-1]["prune/decay"] == 0.0
    forced = Prune(runner, _Stage(PruneConfig(method="asrfp", decay_off_from=0.8, final_zero=True), epochs))
    forced._refresh(runner, epochs - 1, final=True)
    assert runner.records[-1]["prune/decay"] == 0.0


# ------------------------------------------------------------------ the component on a model


def test_refresh_scales_soft_filters_zeroes_hard_ones_and_their_bn():
    model = random_bn(create_model("resnet8", 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = FilterPruner(model)
    assert [u.name for u in p.units] == ["stem.0", *[f"stages.{s}.0.conv{i}" for s in range(3) for i in (1, 2)]]
    p.refresh(0.5, 0.5, 0.25)
    for u in p.units:
        w0, w = before[u.name + ".weight"], model.get_submodule(u.name).weight
        kept, hard = p.kept[u.name], p.hard[u.name]
        soft = ~kept & ~hard
        assert hard.any() and soft.any()
        assert torch.equal(w[kept], w0[kept]) and torch.equal(w[soft], w0[soft] * 0.25) and (w[hard] == 0).all()
        bn_w = model.get_submodule(u.bn).weight
        assert torch.equal(bn_w[~kept], before[u.bn + ".weight"][~kept] * 0.25)  # reference: BN x d, hard too
    assert torch.equal(model.get_submodule("stages.1.0.downsample.0").weight, before["stages.1.0.downsample.0.weight"])


def test_zeroed_soft_filters_still_get_a_gradient_hard_ones_do_not():
    """SFP's pruned filters regrow: zeroed, they still get a gradient through their BN, which zeroing methods leave
    alone by default (mask_bn: false, as he-y's SFP); GHFP's hard ones get none. A zeroed BN weight would stop the
    gradient of every pruned filter (then SFP could not regrow and GHFP's soft filters would be hard already)."""
    assert [PruneConfig(method=m).mask_bn for m in ("sfp", "srfp", "asrfp", "ghfp")] == [False, True, True, False]
    assert PruneConfig(method="ghfp", decay=0.5).mask_bn
    x, y = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    for mask_bn in (False, True):
        model = random_bn(create_model("resnet8", 10))  # trained-like BN: a channel with bias > 0 passes ReLU
        p = FilterPruner(model, mask_bn=mask_bn)
        p.refresh(0.5, 0.5, 0.0)
        nn.functional.cross_entropy(model(x).logits, y).backward()
        p.mask_grads()
        name = "stages.0.0.conv1"
        g = model.get_submodule(name).weight.grad
        soft, hard = ~p.kept[name] & ~p.hard[name], p.hard[name]
        assert soft.any() and hard.any() and (g[hard] == 0).all()
        assert (g[soft].flatten(1).abs().sum(1) > 0).any() if not mask_bn else (g[soft] == 0).all()


def test_unsupported_model_is_a_user_error():
    with pytest.raises(UserError, match="stages.x.prune.*'mlp'.*resnet"):
        FilterPruner(create_model("mlp", 10, hidden=8, depth=1), where="stages.x.prune")


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("arch", ["resnet8", "resnet8x4", "wrn_16_2", "wrn_28_2"])
def test_export_equals_the_masked_model_and_is_rebuilt_from_its_spec(arch, tmp_path):
    model = random_bn(create_model(arch, 10), seed=1)
    FilterPruner(model, include_downsample=True).refresh(0.6, 0.0, 0.0)
    if arch == "wrn_28_2":  # the SSL WRN's convs have biases: a pruned filter's bias is zeroed with it
        assert model.get_submodule("groups.0.0.conv1").bias.eq(0).sum() == int(32 * (1 - 0.6))
    res = export_pruned(model, input_shape=(3, 16, 16), check_batch=2)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert res.max_abs_diff < 1e-5
    assert (res.model(x).logits - model(x).logits).abs().max() < 1e-5
    assert res.params[1] < 0.6 * res.params[0] and res.flops[1] < 0.6 * res.flops[0]
    assert res.flops == (count_flops(model, (3, 16, 16)), count_flops(res.model, (3, 16, 16)))
    # the shape is a constructor spec: rebuilt from a file like any model (resume, stage init, checkpoint load)
    torch.save({"spec": model_spec(res.model), "sd": res.model.state_dict()}, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    again = create_model_from_spec(saved["spec"])
    again.load_state_dict(saved["sd"])
    assert torch.equal(again.eval()(x).logits, res.model(x).logits)
    # pruning the small model again composes (its stream indices map through)
    FilterPruner(res.model).refresh(0.7, 0.0, 0.0)
    twice = export_pruned(res.model, input_shape=(3, 16, 16), check_batch=2)
    assert twice.max_abs_diff < 1e-5 and twice.flops[1] < res.flops[1]


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_2", "wrn_28_2"])
def test_export_keeps_what_zeroed_filters_with_live_bn_still_output(arch):
    """he-y's SFP zeroes the conv only: the channel still outputs BN(0). The export adds that constant into the
    stream (stream writers) or folds it into the next conv (inner convs, exact at the zero-padded borders)."""
    model = random_bn(create_model(arch, 10), seed=2)
    FilterPruner(model, mask_bn=False, include_downsample=True).refresh(0.6, 0.0, 0.0)
    zeroed_bn = random_bn(create_model(arch, 10), seed=2)
    zeroed_bn.load_state_dict(model.state_dict())
    FilterPruner(zeroed_bn, mask_bn=True, include_downsample=True).refresh(0.6, 0.0, 0.0)
    x = torch.randn(2, 3, 16, 16)
    assert (zeroed_bn.eval()(x).logits - model.eval()(x).logits).abs().max() > 1e-3  # the constants matter
    res = export_pruned(model, input_shape=(3, 16, 16), check_batch=2)
    assert res.max_abs_diff < 1e-5 and (res.model(x).logits - model(x).logits).abs().max() < 1e-5
    # and a small network pruned again: an exported conv's folded inputs are masked with its filters
    FilterPruner(res.model, mask_bn=False).refresh(0.7, 0.0, 0.0)
    assert export_pruned(res.model, input_shape=(3, 16, 16), check_batch=2).max_abs_diff < 1e-5


def test_bad_channels_option_is_a_user_error():
    with pytest.raises(UserError, match="channels"):
        create_model("resnet8", 10, channels={"stages.0.0.conv9": 3})
    with pytest.raises(UserError, match=r"\[1, 16\]"):
        create_model("resnet8", 10, channels={"stem.0": 17})


# ------------------------------------------------------------------ inside a run
def test_without_hold_hard_momentum_moves_hard_filters_as_in_the_reference():
    """The reference only masks the gradient: a filter that turned hard keeps its momentum, which moves it off zero
    until the next mask step (`hold_hard: true` keeps it at zero)."""
    model = create_model("resnet8", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    p = FilterPruner(model)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for step in range(3):
        if step == 1:
            p.refresh(0.5, 1.0, 0.0)  # after one step with momentum, half the filters turn hard
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).logits, y).backward()
        p.mask_grads()
        opt.step()
    w = model.get_submodule("stages.0.0.conv1").weight
    assert (w[p.hard["stages.0.0.conv1"]] != 0).any()
    p.zero_hard()
    assert (w[p.hard["stages.0.0.conv1"]] == 0).all()
