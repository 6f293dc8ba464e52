"""Average the step's named terms over `log_every` steps (on device, no per-step sync) and log them.

Per step the terms are stacked into one vector and added to the running sums in one kernel (a few per step
instead of two per term: the step is launch-bound on a fast GPU); the sums are the per-term float32 sums either
way."""

from __future__ import annotations

import time

import torch

from ssl_kd.engine.callback import Callback, CallbackOrder


class TrainMetrics(Callback):
    order = CallbackOrder.METRICS

    def __init__(self, runner) -> None:
        self.every = runner.cfg.experiment.logger.log_every
        self.keys: tuple[str, ...] = ()  # the terms summed in `total`, in order
        self.total: torch.Tensor | None = None
        self.count = 0
        self.t0 = time.perf_counter()

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        """Per term: the sum of its step means since the last log."""
        return {} if self.total is None else dict(zip(self.keys, self.total.unbind()))

    def on_step_end(self, runner, terms) -> None:
        keys = tuple(terms)
        step = torch.stack([_mean(v) for v in terms.values()]) if terms else None
        if keys == self.keys and self.total is not None:
            self.total.add_(step)
        elif self.total is None:
            self.keys, self.total = keys, step
        else:  # the stage's terms changed: merge by name
            sums = self.sums
            for k, v in zip(keys, step.unbind()):
                sums[k] = sums[k] + v if k in sums else v
            self._set(sums)
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
        self._set({})
        self.count, self.t0 = 0, now

    def _set(self, sums: dict[str, torch.Tensor]) -> None:
        self.keys = tuple(sums)
        self.total = torch.stack(list(sums.values())) if sums else None

    def state_dict(self) -> dict:
        return {"sums": {k: v.clone() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._set(dict(state["sums"]))
            self.count = state["count"]


def _mean(v: torch.Tensor) -> torch.Tensor:
    """A term's float32 step value: itself when it is already a float32 scalar (no kernel)."""
    v = v if v.dtype == torch.float32 else v.float()
    return v if v.dim() == 0 else v.mean()
