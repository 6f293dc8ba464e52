"""How one optimizer step's gradient is formed from the step's weighted loss terms: the optimizer-side strategy.

`SummedBackward` (every optimizer but DOT): one backward of the weighted sum per micro-batch; DDP synchronises.
`GroupedBackward` (optimizers that declare loss groups, e.g. DOT): one backward per group, each group's gradient
moved aside (`GroupGrads`), averaged across processes by hand (DDP's hooks assume one backward per forward),
clipped with one shared factor, then handed to the optimizer (`step_group` for all groups but the last).

The runner only calls `micro_step` per micro-batch and `finish` before `optimizer.step()`; it never knows which
strategy it holds. `after_backward` (a stage hook) sees the gradient in `.grad`: once for the summed strategy,
once per loss group for the grouped one (each group's gradient loaded in turn), always before clipping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ssl_kd.optim.config import OptimizerConfig
from ssl_kd.optim.group_grads import GroupGrads
from ssl_kd.optim.groups import loss_groups

BackwardFn = Callable[..., None]  # backward(loss, retain_graph=False)


class MissingTerm(KeyError):
    """A weighted loss term the step did not return (a programming error in a stage)."""


def weighted_sum(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    missing = [k for k in weights if k not in terms]
    if missing:
        raise MissingTerm(missing)
    return sum(w * terms[k] for k, w in weights.items())


class SummedBackward:
    hand_sync = False  # DDP's own hooks average the gradient

    def __init__(self, weights: Mapping[str, float], clip: Callable[[], None]) -> None:
        self.weights = dict(weights)
        self.clip = clip

    def start(self) -> None:
        pass

    def micro_step(self, terms: Mapping[str, torch.Tensor], accum: int, backward: BackwardFn) -> torch.Tensor:
        loss = weighted_sum(terms, self.weights)
        backward(loss / accum if accum > 1 else loss)
        return loss

    def finish(self, after_backward: Callable[[], None]) -> None:
        after_backward()
        self.clip()


class GroupedBackward:
    hand_sync = True  # one backward per group: DDP hooks are off, gradients are averaged in finish()

    def __init__(
        self,
        weights: Mapping[str, float],
        groups: list[tuple[str, dict[str, float]]],
        params: list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None,
        max_norm: float | None,
    ) -> None:
        self.weights, self.groups, self.params = dict(weights), groups, params
        self.optimizer, self.reduce, self.max_norm = optimizer, reduce, max_norm
        self.grads: GroupGrads | None = None

    def start(self) -> None:
        self.grads = GroupGrads(self.params, [g for g, _ in self.groups])

    def micro_step(self, terms: Mapping[str, torch.Tensor], accum: int, backward: BackwardFn) -> torch.Tensor:
        loss = weighted_sum(terms, self.weights)
        for i, (group, group_weights) in enumerate(self.groups):
            part = weighted_sum(terms, group_weights)
            backward(part / accum if accum > 1 else part, retain_graph=i < len(self.groups) - 1)
            self.grads.take(group)
        return loss

    def finish(self, after_backward: Callable[[], None]) -> None:
        if self.reduce is not None:
            self.grads.reduce(self.reduce)
        self.grads.visit(after_backward)
        if self.max_norm:
            self.grads.clip_(self.max_norm)
        self.grads.hand_over(self.optimizer)


def make_backward(
    cfg: OptimizerConfig,
    weights: Mapping[str, float],
    params: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    clip: Callable[[], None],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None,
    max_norm: float | None,
) -> SummedBackward | GroupedBackward:
    """The strategy the configured optimizer needs. `optimizer` is the unwrapped one (it receives the groups)."""
    weights = {k: w for k, w in weights.items() if w != 0}
    groups = loss_groups(cfg, weights)
    if groups is None:
        return SummedBackward(weights, clip)
    return GroupedBackward(weights, groups, params, optimizer, reduce, max_norm)
