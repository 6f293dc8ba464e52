"""USB's algorithms as presets of the one SSL step on the embedded digits data: each trains and logs its policy's
diagnostics, carries EML/ANL, says in --dry-run how EML's set is taken, refuses bad options at their YAML path,
and resumes bit-identically with its statistics (FreeMatch / SoftMatch EMAs, alignment, Dash's rho^, EMA teacher)."""

from __future__ import annotations

import pytest
import torch
from helpers import CONFIGS, assert_resume_exact, run_cli

from ssl_kd.engine import read_metrics
from ssl_kd.report import make_report

CFG = """
_base_: {base}
data: {{ssl: {{num_labels: 20}}}}
models:
  net: {{arch: cnn_small, kwargs: {{width: 16}}}}
stages:
  ssl:
    type: {type}
    train: [net]
    iters: 12
    batch_size: 10
    uratio: 2
    ema: {{decay: 0.9}}
    eval: {{every: 6, batch_size: 400}}
    checkpoint: {{every: 4}}
experiment: {{logger: {{log_every: 2}}}}
"""

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
    p = tmp_path / f"{type_}.yaml"
    p.write_text(CFG.format(base=CONFIGS / "_base_" / "digits.yaml", type=type_))
    return p


def extra(type_):
    return DASH if type_ == "dash" else []


@pytest.mark.parametrize("type_", sorted(PRESETS))
def test_preset_with_eml_and_anl(tmp_path, type_):
    """EML / ANL on every preset: the terms are there and enter the loss with their weights."""
    out = tmp_path / "r"
    args = ["stages.ssl.loss_weights.eml=1.0", "stages.ssl.loss_weights.anl=1.0", f"experiment.output_dir={out}"]
    assert run_cli(write_cfg(tmp_path, type_), *args, *extra(type_)) == 0
    last = [r for r in read_metrics(out) if r["kind"] == "train"][-1]
    want = {"sup", "unsup", "eml", "anl", "k", "mask", "pl_acc"} | PRESETS[type_]
    assert {f"train/{t}" for t in want} <= set(last)
    terms = ["sup", "unsup", "eml", "anl"]
    weights = {"pimodel": {"unsup": 10.0}, "meanteacher": {"unsup": 50.0}}.get(type_, {})
    total = sum(weights.get(t, 1.0) * last[f"train/{t}"] for t in terms)
    total += 0.001 * last.get("train/fairness", 0.0)
    assert last["train/loss"] == pytest.approx(total, rel=1e-4, abs=1e-6)
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
        ("stages.ssl.threshold.nsigma=2", ["stages.ssl.threshold.nsigma", "unknown key"]),
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
