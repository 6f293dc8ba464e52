"""Periodic resume checkpoints (checkpoints/last.pt) and the stage's final weights (checkpoints/<stage>/last.pt)."""

from __future__ import annotations

from ssl_kd.engine.callback import Callback, CallbackOrder


class Checkpoint(Callback):
    order = CallbackOrder.CHECKPOINT

    def __init__(self, runner) -> None:
        stage = runner.stage
        cfg = stage.cfg.checkpoint
        spe = stage.progress.steps_per_epoch
        unit = stage.cfg.unit if cfg.unit == "auto" else cfg.unit
        every = cfg.every or (1 if unit == "epochs" else 1000)
        self.period = every * (spe if unit == "epochs" else 1)

    def on_step_end(self, runner, terms) -> None:
        prog = runner.stage.progress
        # the stage's last step is covered by the end-of-stage checkpoint the runner writes
        if prog.step % self.period == 0 and prog.step < prog.total_steps:
            runner.save_checkpoint(in_stage=True)

    def on_stage_end(self, runner) -> None:
        stage = runner.stage
        if stage.cfg.train:
            runner.save_stage_weights("last", {n: runner.models[n].state_dict() for n in stage.cfg.train})
