"""Filter pruning inside runs: hard filters keep zero weights and gradients (also for DOT's grouped backward),
resume across a mask refresh, prune -> export -> fine-tune in one run with resume, an SSL stage pruning its model and
its EMA, clear errors. The pure functions, the component on a model and the export: tests/unit/test_prune_parts.py."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_resume_exact, run_cli

import ssl_kd.callbacks as callbacks_mod
from ssl_kd.callbacks.prune import Prune
from ssl_kd.engine import Callback, read_metrics
from ssl_kd.models import create_model
from ssl_kd.prune import (
    prunable_units,
)

# ------------------------------------------------------------------ inside a run
RUN = """
data: {{dataset: cifar10, root: {root}, num_workers: 0, limit_test: 40}}
experiment: {{logger: {{progress: false, log_every: 3}}}}
models:
  teacher: {{arch: resnet8}}
  net: {{arch: resnet8}}
stages:
  prune:
    type: supervised
    train: [net]
    epochs: 3
    steps_per_epoch: 3
    batch_size: 16
    optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}}
    checkpoint: {{every: 2, unit: steps}}
    eval: {{batch_size: 40}}
    prune: {{method: ghfp, keep_ratio: 0.5, decay: 0.5}}
"""


def _write(tmp_path, root, extra=""):
    path = tmp_path / "prune.yaml"
    path.write_text(RUN.format(root=root) + extra)
    return path


class HardProbe(Callback):
    """After the prune callback: hard filters have zero gradient after backward and zero weight after the step."""

    order = 6

    def __init__(self) -> None:
        self.grad_checks = self.weight_checks = 0

    def _pruner(self, runner):
        return next(cb for cb in runner.callbacks if isinstance(cb, Prune)).pruners["net"]

    def on_after_backward(self, runner) -> None:
        p = self._pruner(runner)
        for u in p.units:
            g = runner.models["net"].get_submodule(u.name).weight.grad
            assert g is not None and (g[p.hard[u.name]] == 0).all()
            self.grad_checks += int(p.hard[u.name].sum())

    def on_step_end(self, runner, terms) -> None:
        p = self._pruner(runner)
        for u in p.units:
            assert (runner.models["net"].get_submodule(u.name).weight[p.hard[u.name]] == 0).all()
            self.weight_checks += int(p.hard[u.name].sum())


@pytest.mark.parametrize("optimizer", ["sgd", "dot"])
def test_hard_filters_keep_zero_weights_and_gradients(tmp_path, fake_data_root, monkeypatch, optimizer):
    probe = HardProbe()
    orig = callbacks_mod.experiment_callbacks
    monkeypatch.setattr(callbacks_mod, "experiment_callbacks", lambda c: [*orig(c), probe])
    out = tmp_path / "r"
    args = ["stages.prune.prune.hold_hard=true", "stages.prune.prune.decay=0", "stages.prune.epochs=2",
            f"experiment.output_dir={out}"]  # fmt: skip
    if optimizer == "dot":  # grouped backward: the masks apply to each loss group's gradient
        args += ["stages.prune.type=kd", "stages.prune.uses=[teacher]",
                 "stages.prune.optimizer={name: dot, lr: 0.05, momentum: 0.9, delta: 0.075}"]  # fmt: skip
    assert run_cli(_write(tmp_path, fake_data_root), *args) == 0
    assert probe.grad_checks > 0 and probe.weight_checks > 0
    # zeroed filters keep their BN (mask_bn: false for zeroing methods): the export carries its constant output
    final = torch.load(out / "checkpoints/last.pt", weights_only=True)["models"]["net"]
    zero = final["stages.1.0.conv1.weight"].flatten(1).abs().sum(1) == 0
    assert int(zero.sum()) == 16 and (final["stages.1.0.bn1.weight"][zero] != 0).all()


def test_resume_across_a_mask_refresh_is_bit_exact(tmp_path, fake_data_root):
    """Checkpoints every 2 steps (3 per epoch): a crash at step 5 resumes from step 4, after the refresh at step 3,
    and runs through the refreshes at 6 and 9; the masks come back from the checkpoint."""
    cfg = _write(tmp_path, fake_data_root)

    def crashed_after_the_refresh(cut):
        ckpt = torch.load(cut / "checkpoints/last.pt", weights_only=True)
        assert ckpt["step"] == 4 and ckpt["stage"]["callbacks"]["Prune"]["started"]

    full, _ = assert_resume_exact([cfg], 5, tmp_path, after_crash=crashed_after_the_refresh)
    a = torch.load(full / "checkpoints/last.pt", weights_only=True)["models"]["net"]
    # the stage ends physically prunable: every pruned filter is zero (final_zero), at keep 0.5 per layer
    for u in prunable_units(create_model("resnet8", 10)):
        if u.role != "shortcut":
            assert int(a[u.name + ".weight"].flatten(1).abs().sum(1).eq(0).sum()) == len(a[u.name + ".weight"]) // 2


EXPORT_STAGES = """
  export: {type: export, uses: [net], check_batch: 2}
  finetune:
    type: supervised
    train: [net]
    iters: 4
    batch_size: 16
    ema: {enabled: true, decay: 0.5}
    checkpoint: {every: 2, unit: steps}
    eval: {batch_size: 40}
"""


def test_prune_export_finetune_in_one_run_with_resume(tmp_path, fake_data_root, capsys):
    """train with masks (EMA on) -> export stage -> fine-tune the small model; a crash inside the fine-tune
    resumes with the small shape; the export stage's file and `python -m ssl_kd.export` give the same network."""
    cfg = _write(tmp_path, fake_data_root, EXPORT_STAGES)
    args = ["stages.prune.ema={enabled: true, decay: 0.5}", "stages.prune.epochs=2"]
    full = tmp_path / "full"
    assert run_cli(cfg, *args, f"experiment.output_dir={full}") == 0
    printed = capsys.readouterr().out
    assert "max |small - masked|" in printed and "FLOPs" in printed and "params" in printed
    last = torch.load(full / "checkpoints/last.pt", weights_only=True)
    channels = last["specs"]["net"]["kwargs"]["channels"]
    assert channels["stages.2.0.conv1"] == 32 and channels["stem.0"] == 8
    small = torch.load(full / "checkpoints/export/last.pt", weights_only=True)
    assert small["specs"]["net"] == last["specs"]["net"]
    assert last["results"]["export"]["last"]["net/top1"] == last["results"]["prune"]["last"]["net/top1"]
    assert_resume_exact([cfg, *args], 6 + 3, tmp_path, full=full)  # a crash inside the fine-tune
    # the CLI on the prune stage's weights builds the same small network
    from ssl_kd.export import main as export_main

    assert export_main([str(full), "--stage", "prune", "--out", str(tmp_path / "cli.pt")]) == 0
    cli = torch.load(tmp_path / "cli.pt", weights_only=True)
    assert cli["specs"]["net"] == small["specs"]["net"]
    assert all(torch.equal(cli["models"]["net"][k], small["models"]["net"][k]) for k in cli["models"]["net"])
    assert export_main([str(full), "--stage", "prune", "--out", str(tmp_path / "cli.pt")]) == 2  # never overwrites
    assert export_main([str(full), "--stage", "nope", "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


SSL = """
data: {{dataset: cifar10, root: {root}, num_workers: 0, limit_test: 40, ssl: {{num_labels: 40}}}}
experiment: {{logger: {{progress: false}}}}
models:
  net: {{arch: resnet8}}
stages:
  ssl:
    type: fixmatch
    train: [net]
    iters: 4
    steps_per_epoch: 2
    batch_size: 8
    uratio: 1
    eval: {{batch_size: 40}}
    prune: {{method: asrfp, keep_ratio: 0.5, decay: 0.9}}
"""


def test_an_ssl_stage_prunes_its_model_and_its_ema(tmp_path, fake_data_root):
    """Any training stage carries `prune:`; with EMA (on by default for the SSL stages) the mask steps apply to the
    EMA model too, so the evaluated and final (EMA) weights are pruned."""
    cfg = tmp_path / "ssl.yaml"
    cfg.write_text(SSL.format(root=fake_data_root))
    out = tmp_path / "r"
    assert run_cli(cfg, f"experiment.output_dir={out}") == 0
    records = [r for r in read_metrics(out) if r.get("kind") == "prune"]
    assert [r["step"] for r in records] == [0, 2, 4]
    assert [r["prune/decay"] for r in records] == [0.9, 0.9, 0.0]  # d_0 at the start and after epoch 0; final: 0
    final = torch.load(out / "checkpoints/last.pt", weights_only=True)["models"]["net"]
    w = final["stages.2.0.conv1.weight"]
    assert int(w.flatten(1).abs().sum(1).eq(0).sum()) == 32  # half of 64 filters: zero after the final step


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["stages.prune.prune.models=[teacher]"], "prune.models: ['teacher'] are not trained by this stage"),
        (["stages.prune.prune.method=sfp"], "sfp zeroes pruned filters"),  # the YAML's decay 0.5
        (["stages.prune.prune.method=asrfp", "stages.prune.prune.hard_ramp=cosine"], "only ghfp has hard filters"),
        (["stages.prune.type=evaluate", "stages.prune.train=[]", "stages.prune.uses=[net]"], "trains no model"),
        (["models.net.arch=mlp"], "stages.prune.prune (model 'net'): filter pruning does not know"),
    ],
)
def test_bad_prune_config_is_one_clear_error(tmp_path, fake_data_root, capsys, overrides, needle):
    assert run_cli(_write(tmp_path, fake_data_root), *overrides, f"experiment.output_dir={tmp_path / 'r'}") == 2
    assert needle in capsys.readouterr().err
