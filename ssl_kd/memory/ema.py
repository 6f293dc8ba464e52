"""The EMA model of a trained network, as memory a stage can read (e.g. as a mean teacher) and the EMA callback
updates after every step.

Reference behaviour (TorchSSL/USB/FullMatch): shadow <- d*shadow + (1-d)*theta after every step, starting from
the initial weights with no bias correction; BN running statistics are not averaged, evaluation uses the live
model's buffers. `average_buffers: true` averages buffers too.

The update is one `torch._foreach_lerp_` over all averaged tensors (the same arithmetic as
`torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn`, without its per-step Python loop over
parameters, its host syncs on `n_averaged` and its per-step copy of the live buffers, which are copied only when
the averaged model is read).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMAModel:
    def __init__(self, model: nn.Module, decay: float, average_buffers: bool) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.live = model
        self.decay = decay
        self.average_buffers = average_buffers
        self.module = copy.deepcopy(model).requires_grad_(False)
        pairs = list(zip(self.module.parameters(), model.parameters()))
        if average_buffers:
            pairs += list(zip(self.module.buffers(), model.buffers()))
        floating = [(a, b) for a, b in pairs if a.is_floating_point() or a.is_complex()]
        self._avg, self._src = [a for a, _ in floating], [b for _, b in floating]
        self._other = [(a, b) for a, b in pairs if not (a.is_floating_point() or a.is_complex())]

    @torch.no_grad()
    def update(self) -> None:
        if self._avg:
            torch._foreach_lerp_(self._avg, self._src, 1.0 - self.decay)
        for a, b in self._other:  # e.g. BN's num_batches_tracked, when buffers are averaged
            a.copy_(a * self.decay + b * (1.0 - self.decay))

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        if not self.average_buffers:
            for dst, src in zip(self.module.buffers(), self.live.buffers()):
                dst.copy_(src)

    def eval_module(self) -> nn.Module:
        """The averaged model, with the live BN statistics unless buffers are averaged."""
        self._sync_buffers()
        return self.module

    @torch.no_grad()
    def copy_to_live(self) -> None:
        self._sync_buffers()
        self.live.load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict:
        self._sync_buffers()
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
