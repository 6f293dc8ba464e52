"""USB's algorithms as presets of the one SSL step on the embedded digits data: each trains and logs its policy's
diagnostics, carries EML/ANL, says in --dry-run how EML's set is taken, refuses bad options at their YAML path,
and resumes bit-identically with its statistics (FreeMatch / SoftMatch EMAs, alignment, Dash's rho^, EMA teacher)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_resume_exact, run_cli, ssl_digits_config
from sync_trap import SyncTrap

from ssl_kd.engine import read_metrics
from ssl_kd.report import make_report

# Dash: a 3-step warm-up estimating rho^, then a decay every 2 steps
DASH = ["stages.ssl.threshold.warmup_iters=3", "stages.ssl.threshold.estimate_steps=2",
        "stages.ssl.threshold.update_every=2"]  # fmt: skip

PRESETS = {
    "freematch": {"tau_t", "threshold", "fairness"},
    "softmatch": {"mu_t", "sigma_t"},
    "adamatch": {"threshold"},
    "dash": {"rho"},
    "uda": set(),
    "pseudolabel": set(),
    "pimodel": set(),
    "meanteacher": set(),
}


def write_cfg(tmp_path, type_):
    return ssl_digits_config(tmp_path / f"{type_}.yaml", type_, iters=12, eval_every=6, checkpoint_every=4, log_every=2)


def extra(type_):
    return DASH if type_ == "dash" else []


@pytest.mark.parametrize("type_", sorted(PRESETS))
def test_preset_with_eml_and_anl(tmp_path, type_):
    """EML / ANL on every preset: the terms are there and enter the loss with their weights."""
    out = tmp_path / "r"
    cfg = ssl_digits_config(tmp_path / f"{type_}.yaml", type_, iters=6, eval_every=6, log_every=2)
    args = ["stages.ssl.loss_weights.eml=1.0", "stages.ssl.loss_weights.anl=1.0", f"experiment.output_dir={out}"]
    assert run_cli(cfg, *args, *extra(type_)) == 0
    last = [r for r in read_metrics(out) if r["kind"] == "train"][-1]
    want = {"sup", "unsup", "eml", "anl", "k", "mask", "pl_acc"} | PRESETS[type_]
    assert {f"train/{t}" for t in want} <= set(last)
    terms = ["sup", "unsup", "eml", "anl"]
    weights = {"pimodel": {"unsup": 10.0}, "meanteacher": {"unsup": 50.0}}.get(type_, {})
    total = sum(weights.get(t, 1.0) * last[f"train/{t}"] for t in terms)
    total += 0.001 * last.get("train/fairness", 0.0)
    assert last["train/loss"] == pytest.approx(total, rel=1e-4, abs=1e-6)
    if type_ not in ("freematch", "softmatch", "dash", "uda"):  # the report's own tests draw the common plots
        return
    # the report draws the policy's own diagnostics beside the mask rate and pseudo-label accuracy
    made = {p.name for p in (make_report(out).parent).glob("*.png")}
    assert "pseudo_labels.png" in made
    assert ("self_adaptive.png" in made) == (type_ in ("freematch", "softmatch"))
    assert ("dash_rho.png" in made) == (type_ == "dash")


@pytest.mark.parametrize(
    ("type_", "rule"),
    [("softmatch", "weight 1 (confidence >= mu_t)"), ("dash", "loss <= rho_t"), ("freematch", "the 0/1 mask")],
)
def test_dry_run_says_how_eml_selects(tmp_path, capsys, type_, rule):
    assert run_cli(write_cfg(tmp_path, type_), "stages.ssl.loss_weights.eml=1", "--dry-run") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "EML selected set:" in out and rule in out


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("stages.ssl.threshold.nsigma=2", ["stages.ssl.threshold.nsigma", "n_sigma"]),
        ("stages.ssl.dist_align.type=gaussian", ["stages.ssl.dist_align", "uniform"]),
        ("stages.ssl.loss_weights.fairness=0.1", ["fairness", "freematch"]),
    ],
)
def test_bad_options_are_one_line_at_their_path(tmp_path, capsys, override, words):
    type_ = "adamatch" if "fairness" in override else "softmatch"
    assert run_cli(write_cfg(tmp_path, type_), override, "--dry-run") == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_mean_teacher_needs_separate_passes(tmp_path, capsys):
    assert run_cli(write_cfg(tmp_path, "meanteacher"), "stages.ssl.use_cat=true", "--dry-run") == 2
    assert "use_cat: false" in capsys.readouterr().err


@pytest.mark.parametrize("type_", ["freematch", "softmatch", "adamatch", "dash", "meanteacher"])
def test_resume_is_bit_identical_with_the_policy_state(tmp_path, type_):
    def state_saved(cut):
        states = torch.load(cut / "checkpoints/last.pt", weights_only=True)["stage"]["states"]
        if type_ in ("freematch", "softmatch", "dash"):
            assert "selected_label" in states  # the policy's state, under the threshold's state name
        if type_ in ("softmatch", "adamatch"):
            assert bool(states["dist_align"]["started"])

    args = [write_cfg(tmp_path, type_), "stages.ssl.loss_weights.eml=1.0", *extra(type_)]
    assert_resume_exact(args, 6, tmp_path, metrics=True, after_crash=state_saved)


ALL_TYPES = ["fixmatch", "flexmatch", "fullmatch", "fullflex", *sorted(PRESETS)]


def _stand_in_stage(cls, cfg, net, teacher=None):
    """Stage `cls` without the engine, on stand-in networks (as benchmarks/usb_equivalence.py drives it): `net` is
    the trained model, `teacher` its EMA."""

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return type("Out", (), {"logits": self.m(x)})()

    class Local(cls):
        device = torch.device("cpu")

        def model(self, name):
            return Wrap(net)

        def ema(self, name):
            return Wrap(teacher)

    st = Local("ssl", cfg, None)
    st.net = "net"
    return st


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_the_step_has_no_host_sync(type_):
    """Every preset's train_step and backward (with EML / ANL on) make no call that syncs the host with a GPU
    (tests/sync_trap.py): 0 syncs per step. The stage runs without the engine, on a stand-in network."""
    from ssl_kd.engine import stage_types
    from ssl_kd.engine.stage import Progress

    cls = stage_types()[type_]
    block = {"type": type_, "train": ["net"], "loss_weights": {"eml": 1.0, "anl": 1.0}}
    if type_ == "dash":
        block["threshold"] = {"type": "dash", "warmup_iters": 2}
    if type_ == "adamatch":
        block["logit_interpolation"] = True
    cfg = cls.Config.model_validate(block)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 5))
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 5))
    st = _stand_in_stage(cls, cfg, net, teacher)
    st.progress = Progress(0, 10, 5)
    st.build_parts(40, 5)
    g = torch.Generator().manual_seed(0)
    for t in range(4):
        st.progress.step = t
        u = {"w": torch.randn(12, 6, generator=g), "s": torch.randn(12, 6, generator=g),
             "idx": torch.arange(12) + t, "y": torch.randint(0, 5, (12,), generator=g)}  # fmt: skip
        lab = {"x": torch.randn(4, 6, generator=g), "y": torch.randint(0, 5, (4,), generator=g), "idx": torch.arange(4)}
        batch = {"labeled": lab, "unlabeled": u}
        with SyncTrap() as trap:
            losses, diagnostics = st.train_step(batch)
            total = sum(w * losses[k] for k, w in cfg.loss_weights.items() if w)
            total.backward()
        assert not trap.events, trap.summary()
        assert torch.isfinite(total)


def _splitmix64(x: int) -> int:
    """splitmix64 on Python ints (the uint64 finaliser), written out for the test."""
    m = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_adamatch_logit_interpolation():
    """labelled logits = l * (joint pass) + (1 - l) * (labelled-only pass), l from (seed, step, image index, class);
    the labelled-only pass leaves BN's running statistics to the joint pass."""
    import copy

    from ssl_kd.data.hashing import mix_seed
    from ssl_kd.engine import stage_types
    from ssl_kd.engine.stage import Progress

    cls = stage_types()["adamatch"]
    cfg = cls.Config.model_validate({"type": "adamatch", "train": ["net"], "logit_interpolation": True})
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 5))
    before = copy.deepcopy(net)

    st = _stand_in_stage(cls, cfg, net)
    st.progress = Progress(3, 10, 5)
    st.build_parts(40, 5, interpolation_seed=1234)
    seen = {}
    supervised = st._supervised
    st._supervised = lambda zl, yl: seen.setdefault("zl", zl.detach()) is not None and supervised(zl, yl)
    g = torch.Generator().manual_seed(1)
    xl, xw, xs = torch.randn(4, 6, generator=g), torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    idx = torch.tensor([7, 2, 9, 30])
    u = {"w": xw, "s": xs, "idx": torch.arange(12), "y": torch.zeros(12, dtype=torch.long)}
    st.train_step({"labeled": {"x": xl, "y": torch.tensor([0, 1, 2, 3]), "idx": idx}, "unlabeled": u})
    alone = copy.deepcopy(before)(xl).detach()
    joint = before(torch.cat([xl, xw, xs]))[:4].detach()  # `before` now holds the joint pass's running stats
    step_seed = mix_seed(1234, 3)
    lam = torch.tensor([[(_splitmix64(_splitmix64(step_seed ^ int(i)) ^ j) >> 1 >> 11) / 2**52 for j in range(5)]
                        for i in idx])  # fmt: skip
    assert torch.allclose(seen["zl"], lam * joint + (1 - lam) * alone, atol=1e-6)
    assert lam.std() > 0.05 and lam.min() >= 0 and lam.max() < 1
    assert torch.equal(net[1].running_mean, before[1].running_mean)  # the joint pass's statistics only
