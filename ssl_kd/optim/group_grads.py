"""The runner's side of the loss-group protocol: per-group gradient sums for one optimizer step.

An optimizer that declares `loss_groups` (e.g. DOT: `distill`, then `task`) needs each group's gradient on its
own. The runner backpropagates the groups one after the other, moving each result out of `.grad` into this
object (summing over accumulation steps), then `hand_over` gives every group but the last to
`optimizer.step_group(name)` and leaves the last group's gradient in `.grad` for `optimizer.step()`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GroupGrads:
    """Gradient sums per loss group, aligned with `params` (None where a group gave a parameter no gradient)."""

    def __init__(self, params: list[torch.Tensor], groups: list[str]) -> None:
        self.params = params
        self.sums: dict[str, list[torch.Tensor | None]] = {g: [None] * len(params) for g in groups}

    def take(self, group: str) -> None:
        """Move the gradients just backpropagated for `group` out of `.grad` (so the next group starts clean)."""
        sums = self.sums[group]
        for i, p in enumerate(self.params):
            if p.grad is not None:
                sums[i] = p.grad if sums[i] is None else sums[i].add_(p.grad)
                p.grad = None

    def reduce(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply `fn` (e.g. a mean all-reduce across processes) to every stored gradient."""
        for sums in self.sums.values():
            for i, g in enumerate(sums):
                if g is not None:
                    sums[i] = fn(g)

    @torch.no_grad()
    def clip_(self, max_norm: float) -> torch.Tensor:
        """Scale all groups by one factor so that their *sum* has norm <= max_norm; returns the unclipped norm."""
        per_param = []
        for i in range(len(self.params)):
            parts = [s[i] for s in self.sums.values() if s[i] is not None]
            if parts:
                per_param.append(torch.linalg.vector_norm(torch.stack(parts).sum(dim=0)))
        if not per_param:
            return torch.zeros(())
        norm = torch.linalg.vector_norm(torch.stack(per_param))
        factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for sums in self.sums.values():
            for g in sums:
                if g is not None:
                    g.mul_(factor)
        return norm

    def visit(self, fn: Callable[[], None]) -> None:
        """Load each group's gradient into `.grad`, call `fn` (it may change `.grad` in place), and store it back."""
        for name in list(self.sums):
            self._load(name)
            fn()
            self.sums[name] = [p.grad for p in self.params]
            for p in self.params:
                p.grad = None
        # `.grad` is left empty, as after `take`

    def hand_over(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step_group(g)` for every group but the last; the last group's gradient is left in `.grad`."""
        names = list(self.sums)
        for name in names[:-1]:
            self._load(name)
            optimizer.step_group(name)
        self._load(names[-1])

    def _load(self, group: str) -> None:
        for p, g in zip(self.params, self.sums[group]):
            p.grad = g
