"""Zero host syncs per training step: the SSL configs run through the CLI with the sync trap (tests/sync_trap.py)
entered after the first step and left after the last, on both data paths. The trapped window holds everything a
step does: the batch (the DataLoader's output moved to the device, or the device path's batch made on the device),
`train_step`, backward, clipping, the optimizer step, the LR scheduler, the EMA update and every callback's
`on_step_end` (NaN guard, metrics, progress bar, W&B logger, evaluation and checkpoint schedules). The only reads
allowed are the metrics' at a `log_every` boundary (TrainMetrics.flush: the means and the NaN guard's flags)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator

import pytest
from helpers import CONFIGS, extra_callback, run_cli, shipped_configs, small_overrides, write_fake_npz
from sync_trap import SyncEvent, SyncTrap

from ssl_kd.config import load_yaml
from ssl_kd.engine import Callback

STEPS, LOG_EVERY = 7, 3  # trapped: steps 2..7, with log boundaries at steps 3 and 6 and the stage's last step 7
# every SSL preset: the shipped cifar10_40 configs, and the classic baselines (no config of their own) as stage
# types over FixMatch's; Dash with rho_init, so the trapped steps are past its warm-up (soft, then hard labels);
# bf16 autocast with gradient accumulation. Extra overrides: `{s}` is the config's stage.
CASES = {
    **{c: [] for c in ("fullmatch_cifar10_40", "fixmatch_cifar10_40", "flexmatch_cifar10_40", "fullflex_cifar10_40",
                       "fullmatch_on_freematch_cifar10_40", "fullmatch_on_softmatch_cifar10_40", "adamatch_cifar10_40",
                       "uda_cifar10_40")},
    "dash_cifar10_40": ["{s}.threshold.rho_init=0.3", "{s}.threshold.update_every=2", "{s}.threshold.rho_min=0.2"],
    **{f"fixmatch_cifar10_40+{t}": [f"{{s}}.type={t}"] for t in ("pseudolabel", "pimodel", "meanteacher")},
    "fullmatch_cifar10_40+bf16+accum": ["{s}.grad_accum=2", "experiment.precision=bf16"],  # autocast, accumulation
    "adamatch_cifar10_40+interpolation": ["{s}.logit_interpolation=true"],  # hashed per-logit draws on the device
}  # fmt: skip


class TrapSteps(Callback):
    """Enters the trap at the end of step `first` (after every other callback) and leaves it at the end of the
    stage's last step; each event is labelled with the step it belongs to."""

    order = 10**6

    def __init__(self, trap: SyncTrap, first: int = 1) -> None:
        self.trap, self.first = trap, first

    def on_step_end(self, runner, terms) -> None:
        step, total = runner.stage.progress.step, runner.stage.progress.total_steps
        if step == total:
            self.trap.exit()
        elif step >= self.first:
            self.trap.step = step + 1
            if not self.trap.active:
                self.trap.enter()

    def on_stage_end(self, runner) -> None:
        self.trap.exit()


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:  # so the progress bar is drawn (and updated every step)
        return True


@contextlib.contextmanager
def trapped(trap: SyncTrap) -> Iterator[None]:
    try:
        with extra_callback(TrapSteps(trap)):
            yield
    finally:
        trap.exit()


def at_log_boundary(e: SyncEvent) -> bool:
    """The metrics' read every log_every steps (and at the stage's end)."""
    flushing = any("ssl_kd/callbacks/metrics.py" in f and f.endswith(" in flush") for f in e.stack)
    return flushing and (e.step % LOG_EVERY == 0 or e.step == STEPS)


def run_trapped(tmp_path, name: str, pipeline: str, monkeypatch) -> SyncTrap:
    root = tmp_path / "data"
    root.mkdir()
    write_fake_npz(root / "cifar10.npz", 10, 4, 2)
    path = CONFIGS / f"{name.partition('+')[0]}.yaml"
    (stage,) = load_yaml(path)["stages"]
    s = f"stages.{stage}"
    args = [path, f"data.root={root}", "data.num_workers=0", "data.limit_test=20", "data.ssl.num_labels=10",
            f"data.pipeline={pipeline}", "models.net.arch=cnn_small", 'models.net.kwargs={"width": 8}',
            f"{s}.iters={STEPS}", f"{s}.batch_size=4", f"{s}.uratio=2", f"{s}.eval.batch_size=20",
            f"{s}.eval.every=1000", f"{s}.eval.unit=steps", f"{s}.checkpoint.every=1000", f"{s}.checkpoint.unit=steps",
            f"{s}.clip_grad_norm=5.0", f"experiment.logger.log_every={LOG_EVERY}", "experiment.logger.progress=true",
            'experiment.logger.wandb={"mode": "disabled"}', f"experiment.output_dir={tmp_path / 'run'}",
            *(o.format(s=s) for o in CASES[name])]  # fmt: skip
    monkeypatch.setattr(sys, "stderr", FakeTTY())  # the progress bar is drawn only on a terminal
    trap = SyncTrap()
    with trapped(trap):
        assert run_cli(*args) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [3, 6, 7]  # the trapped window ran
    return trap


@pytest.mark.parametrize("pipeline", ["host", "device"])
@pytest.mark.parametrize("name", CASES)
def test_ssl_step_is_sync_free(tmp_path, monkeypatch, name, pipeline):
    trap = run_trapped(tmp_path, name, pipeline, monkeypatch)
    stray = [e for e in trap.events if not at_log_boundary(e)]
    assert not stray, f"{len(stray)} host syncs inside training steps:\n{trap.summary(stray)}"
    # the trap saw the metrics' reads at the log boundaries: it was active in the window
    assert {e.step for e in trap.events if at_log_boundary(e)} == {3, 6, 7}, trap.summary()


# Reads of values that live on the host on every device: a mix's draws from torch's global CPU generator
# (data/mixing.py, checkpointed per process by design) and torch optimizers' step counters (host tensors unless
# `capturable` / `fused`). On a CPU-only machine the trap cannot tell them from device reads.
HOST_DRAWS = ("ssl_kd/data/mixing.py:",)
HOST_DRAW_FUNCTIONS = (" in _lam", " in sample_cutmix", " in sample_paste_box", " in sample_mix")


def host_only(e: SyncEvent) -> bool:
    if e.where.startswith(HOST_DRAWS) and e.where.endswith(HOST_DRAW_FUNCTIONS):
        return True
    return e.what == "item" and "/torch/optim/" in e.site and e.site.endswith(" in _get_value")


def at_epoch_end(e: SyncEvent) -> bool:
    """An epoch end (where evaluation, checkpoints and the NaN guard's check are scheduled), not a step."""
    return any(f.endswith((" in on_epoch_end", " in check")) and "ssl_kd/callbacks/" in f for f in e.stack)


@pytest.mark.slow
@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: str(p.relative_to(CONFIGS).with_suffix("")))
def test_shipped_config_steps_are_sync_free(tmp_path, fake_data_root, path):
    """Every shipped config (the small stand-in models, host data path), 7 steps per stage, trapped from each
    stage's second step to its last: no sync but the metrics' at log boundaries and the epoch ends' checks."""
    args = [*small_overrides(path, fake_data_root), "experiment.logger.log_every=3", "experiment.logger.progress=false"]
    for st in load_yaml(path).get("stages", {}):
        args += [f"stages.{st}.iters=7", f"stages.{st}.eval.every=1000", f"stages.{st}.eval.unit=steps",
                 f"stages.{st}.checkpoint.every=1000", f"stages.{st}.checkpoint.unit=steps"]  # fmt: skip
    trap = SyncTrap()
    with trapped(trap):
        assert run_cli(path, *args, f"experiment.output_dir={tmp_path / 'run'}") == 0
    stray = [e for e in trap.events if not (at_log_boundary(e) or at_epoch_end(e) or host_only(e))]
    assert not stray, f"{len(stray)} host syncs inside training steps:\n{trap.summary(stray)}"
