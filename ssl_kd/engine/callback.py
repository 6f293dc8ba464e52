"""Callback base and the explicit order in which callbacks see each event."""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ssl_kd.engine.runner import Runner


class CallbackOrder(IntEnum):
    """Lower runs first on every event. The guard sees a step before anything acts on it."""

    GUARD = 0
    WEIGHTS = 5  # callbacks that edit the trained weights (e.g. pruning masks), before anything reads them
    SCHEDULER = 10
    EMA = 20
    METRICS = 30
    EVALUATION = 40
    CHECKPOINT = 50
    LOGGER = 60


class Callback:
    order: int = CallbackOrder.LOGGER

    def on_experiment_start(self, runner: Runner) -> None: ...
    def on_stage_start(self, runner: Runner) -> None: ...
    def on_epoch_start(self, runner: Runner) -> None: ...
    def on_after_backward(self, runner: Runner) -> None: ...  # right after Stage.after_backward, same point
    def on_step_end(self, runner: Runner, terms: dict[str, Any]) -> None: ...
    def on_epoch_end(self, runner: Runner) -> None: ...
    def on_stage_end(self, runner: Runner) -> None: ...
    def on_experiment_end(self, runner: Runner) -> None: ...
    def on_log(self, runner: Runner, record: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
