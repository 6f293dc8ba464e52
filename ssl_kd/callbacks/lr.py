"""LR scheduling, per optimizer step or per epoch (the stage's `scheduler.interval`)."""

from __future__ import annotations

from ssl_kd.engine.callback import Callback, CallbackOrder


class LRScheduler(Callback):
    order = CallbackOrder.SCHEDULER

    def on_step_end(self, runner, terms) -> None:
        if runner.scheduler is not None and not runner.scheduler_per_epoch:
            if not getattr(runner.accelerator, "optimizer_step_was_skipped", False):
                runner.scheduler.step()

    def on_epoch_end(self, runner) -> None:
        if runner.scheduler is not None and runner.scheduler_per_epoch:
            runner.scheduler.step()
