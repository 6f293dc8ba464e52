"""The semi-supervised stage on the embedded digits data: presets, logged terms, history checkpointed, resume."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_resume_exact, run_cli, ssl_digits_config

from ssl_kd.engine import read_metrics


def write_cfg(tmp_path, type_):
    return ssl_digits_config(tmp_path / f"{type_}.yaml", type_, iters=24, eval_every=8, checkpoint_every=5, log_every=4)


@pytest.mark.parametrize(
    "type_,terms",
    [
        ("fixmatch", {"sup", "unsup", "mask", "pl_acc"}),
        ("flexmatch", {"sup", "unsup", "mask", "pl_acc", "threshold"}),
        ("fullmatch", {"sup", "unsup", "eml", "anl", "k", "mask", "pl_acc"}),
        ("fullflex", {"sup", "unsup", "eml", "anl", "k", "mask", "pl_acc", "threshold"}),
    ],
)
def test_presets_log_their_terms(tmp_path, type_, terms):
    out = tmp_path / "r"
    assert run_cli(write_cfg(tmp_path, type_), f"experiment.output_dir={out}") == 0
    recs = read_metrics(out)
    train = [r for r in recs if r["kind"] == "train"]
    assert {f"train/{t}" for t in terms} <= set(train[-1])
    if "eml" not in terms:
        assert "train/eml" not in train[-1]  # FixMatch/FlexMatch do not compute the FullMatch terms
    ev = [r for r in recs if r["kind"] == "eval"][-1]
    assert "test/net/top1" in ev and "test/net/raw_top1" in ev  # EMA reported, raw model too
    assert ("class_thresholds" in ev) == ("threshold" in terms)
    if "k" in terms:
        assert 2 <= train[-1]["train/k"] <= 10
    assert (out / "split.npz").exists()


def test_fixmatch_plus_anl_is_a_config(tmp_path):
    out = tmp_path / "r"
    assert (
        run_cli(write_cfg(tmp_path, "fixmatch"), "stages.ssl.loss_weights.anl=1.0", f"experiment.output_dir={out}") == 0
    )
    last = [r for r in read_metrics(out) if r["kind"] == "train"][-1]
    assert "train/anl" in last and "train/k" in last
    assert last["train/loss"] == pytest.approx(last["train/sup"] + last["train/unsup"] + last["train/anl"], rel=1e-4)


def test_separate_passes(tmp_path):
    out = tmp_path / "r"
    assert run_cli(write_cfg(tmp_path, "fullmatch"), "stages.ssl.use_cat=false", f"experiment.output_dir={out}") == 0
    assert read_metrics(out)


def test_unknown_term_weight_is_a_config_error(tmp_path, capsys):
    assert run_cli(write_cfg(tmp_path, "fullmatch"), "stages.ssl.loss_weights.emll=1", "--dry-run") == 2
    assert "emll" in capsys.readouterr().err


def test_fullflex_resume_is_bit_identical_with_its_history(tmp_path):
    def history_saved(cut):
        mid = torch.load(cut / "checkpoints/last.pt", weights_only=True)
        assert mid["step"] == 10 and (mid["stage"]["states"]["selected_label"]["selected_label"] >= 0).any()

    # the same weights, and the same thresholds, masks, k at every step (every metrics record)
    assert_resume_exact([write_cfg(tmp_path, "fullflex")], 13, tmp_path, metrics=True, after_crash=history_saved)
