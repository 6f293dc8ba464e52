"""Keep the stage's EMA models current: update after every step, optionally hand the averaged weights to the live
model at the stage's end. The EMA models themselves are memory (`ssl_kd.memory.EMAModel`) the runner registers
with the stage, so a stage can read them (`Stage.ema(name)`) and they are checkpointed with its state."""

from __future__ import annotations

from ssl_kd.engine.callback import Callback, CallbackOrder
from ssl_kd.memory import EMAModel

__all__ = ["EMA", "EMAModel"]


class EMA(Callback):
    order = CallbackOrder.EMA

    def __init__(self, runner, decay: float, apply_at_end: bool) -> None:
        self.apply_at_end = apply_at_end
        horizon, total = 1.0 / (1.0 - decay), runner.stage.progress.total_steps
        if runner.is_main and total < 2 * horizon:
            print(
                f"  note: stages.{runner.stage.name}.ema.decay={decay} averages over ~{horizon:.0f} steps but "
                f"the stage has {total}; the EMA model will stay close to the starting weights "
                "(lower the decay for short runs).",
                flush=True,
            )

    def on_step_end(self, runner, terms) -> None:
        for m in runner.stage.ema_models.values():
            m.update()

    def on_stage_end(self, runner) -> None:
        if self.apply_at_end:
            for m in runner.stage.ema_models.values():
                m.copy_to_live()
