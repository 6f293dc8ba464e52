"""metrics.jsonl: one JSON object per logged train interval or evaluation, with stage and step."""

from __future__ import annotations

from ssl_kd.engine.callback import Callback, CallbackOrder


class JsonlLogger(Callback):
    order = CallbackOrder.LOGGER

    def on_log(self, runner, record) -> None:
        runner.run_dir.append_metrics(record)
