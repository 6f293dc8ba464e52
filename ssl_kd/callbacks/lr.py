"""LR scheduling, per optimizer step or per epoch (the stage's `scheduler.interval`)."""

from __future__ import annotations

from ssl_kd.engine.callback import Callback, CallbackOrder


class LRScheduler(Callback):
    order = CallbackOrder.SCHEDULER

    def on_step_end(self, runner, terms) -> None:
        skipped = getattr(runner.accelerator, "optimizer_step_was_skipped", False)  # fp16 overflow step
        if runner.scheduler is not None and not runner.scheduler_per_epoch and not skipped:
            runner.scheduler.step()

    def on_epoch_end(self, runner) -> None:
        if runner.scheduler is not None and runner.scheduler_per_epoch:
            runner.scheduler.step()
