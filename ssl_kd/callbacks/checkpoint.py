"""Periodic resume checkpoints (checkpoints/last.pt) and the stage's final weights (checkpoints/<stage>/last.pt).

A checkpoint due at an epoch boundary is written at the epoch's end, after every epoch-end hook (the stage's, the
per-epoch LR step, evaluation), so a run resumed from it continues with exactly the state the uninterrupted run
had when it began the next epoch."""

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

    def _due(self, prog) -> bool:
        # the stage's last step is covered by the end-of-stage checkpoint the runner writes
        return prog.step % self.period == 0 and prog.step < prog.total_steps

    def on_step_end(self, runner, terms) -> None:
        prog = runner.stage.progress
        if self._due(prog) and prog.step % prog.steps_per_epoch != 0:
            runner.save_checkpoint(in_stage=True)

    def on_epoch_end(self, runner) -> None:
        if self._due(runner.stage.progress):
            runner.save_checkpoint(in_stage=True)

    def on_stage_end(self, runner) -> None:
        stage = runner.stage
        if stage.cfg.train or stage.modules:  # e.g. a linear probe trains only its own head
            runner.save_stage_weights(
                "last",
                {
                    "models": {n: runner.models[n].state_dict() for n in stage.cfg.train},
                    "modules": {n: m.state_dict() for n, m in stage.modules.items()},
                },
            )
