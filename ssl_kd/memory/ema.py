"""The EMA model of a trained network, as memory a stage can read (e.g. as a mean teacher) and the EMA callback
updates after every step. Built on torch.optim.swa_utils.AveragedModel.

Reference behaviour (TorchSSL/USB/FullMatch): shadow <- d*shadow + (1-d)*theta after every step, starting from
the initial weights with no bias correction; BN running statistics are not averaged, evaluation uses the live
model's buffers. `average_buffers: true` averages buffers too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMAModel:
    def __init__(self, model: nn.Module, decay: float, average_buffers: bool) -> None:
        self.live = model
        self.decay = decay
        self.average_buffers = average_buffers
        self.avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=average_buffers)
        # AveragedModel copies theta on its first update; the references average from the start instead.
        self.avg.n_averaged.fill_(1)
        self.avg.requires_grad_(False)

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
