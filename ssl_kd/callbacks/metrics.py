"""Average the step's named terms over `log_every` steps (on device, no per-step sync) and log them."""

from __future__ import annotations

import time

import torch

from ssl_kd.engine.callback import Callback, CallbackOrder


class TrainMetrics(Callback):
    order = CallbackOrder.METRICS

    def __init__(self, runner) -> None:
        self.every = runner.cfg.experiment.logger.log_every
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.t0 = time.perf_counter()

    def on_step_end(self, runner, terms) -> None:
        for k, v in terms.items():
            v = v.float().mean()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1
        step = runner.stage.progress.step
        if step % self.every == 0 or step == runner.stage.progress.total_steps:
            self.flush(runner)

    def flush(self, runner) -> None:
        if not self.count:
            return
        runner.check_finite()
        means = runner.reduce_mean({k: v / self.count for k, v in self.sums.items()})
        now = time.perf_counter()
        record = {"kind": "train", **{f"train/{k}": v for k, v in means.items()}}
        if runner.optimizer is not None:
            record["lr"] = runner.optimizer.param_groups[0]["lr"]
        record["it_s"] = self.count / max(1e-9, now - self.t0)
        runner.log(record)
        self.sums, self.count, self.t0 = {}, 0, now

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.sums, self.count = dict(state["sums"]), state["count"]
