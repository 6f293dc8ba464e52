"""EMA of the trained models' parameters, with torch.optim.swa_utils.AveragedModel.

Reference behaviour (TorchSSL/USB/FullMatch): shadow <- d*shadow + (1-d)*theta after every step, starting from
the initial weights with no bias correction; BN running statistics are not averaged, evaluation uses the live
model's buffers. `average_buffers: true` averages buffers too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ssl_kd.engine.callback import Callback, CallbackOrder


class EMAModel:
    def __init__(self, model: nn.Module, decay: float, average_buffers: bool) -> None:
        self.live = model
        self.average_buffers = average_buffers
        self.avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=average_buffers)
        # AveragedModel copies theta on its first update; the references average from the start instead.
        self.avg.n_averaged.fill_(1)

    def update(self) -> None:
        self.avg.update_parameters(self.live)

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        if not self.average_buffers:
            for dst, src in zip(self.avg.module.buffers(), self.live.buffers()):
                dst.copy_(src)

    def eval_module(self) -> nn.Module:
        """The averaged model, with the live BN statistics unless buffers are averaged."""
        self._sync_buffers()
        return self.avg.module

    @torch.no_grad()
    def copy_to_live(self) -> None:
        self._sync_buffers()
        self.live.load_state_dict(self.avg.module.state_dict())

    def state_dict(self) -> dict:
        return self.avg.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.avg.load_state_dict(state)


class EMA(Callback):
    order = CallbackOrder.EMA

    def __init__(self, runner, decay: float, average_buffers: bool, apply_at_end: bool) -> None:
        self.apply_at_end = apply_at_end
        horizon, total = 1.0 / (1.0 - decay), runner.stage.progress.total_steps
        if runner.is_main and total < 2 * horizon:
            print(
                f"  note: stages.{runner.stage.name}.ema.decay={decay} averages over ~{horizon:.0f} steps but "
                f"the stage has {total}; the EMA model will stay close to the starting weights "
                "(lower the decay for short runs).",
                flush=True,
            )
        self.models = {n: EMAModel(runner.models[n], decay, average_buffers) for n in runner.stage.cfg.train}

    def on_stage_start(self, runner) -> None:
        runner.ema = self.models

    def on_step_end(self, runner, terms) -> None:
        for m in self.models.values():
            m.update()

    def on_stage_end(self, runner) -> None:
        if self.apply_at_end:
            for m in self.models.values():
                m.copy_to_live()
        runner.ema = {}

    def state_dict(self) -> dict:
        return {n: m.state_dict() for n, m in self.models.items()}

    def load_state_dict(self, state: dict) -> None:
        for n, sd in state.items():
            self.models[n].load_state_dict(sd)
