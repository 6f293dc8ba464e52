"""DOT, the Distillation-Oriented Trainer (Zhao et al., ICCV 2023; mdistiller@a08d46f mdistiller/engine/dot.py).

SGD with two momentum buffers per parameter: one for the task-loss gradient (momentum mu - delta) and one for the
distillation-loss gradient (mu + delta), so the distillation direction carries more inertia and dominates.
Per iteration (as mdistiller's trainer calls it):

    zero_grad(); loss_kd.backward(retain_graph=True); step_kd()    # records the distillation gradients
    zero_grad(); loss_task.backward();                step()       # applies both updates

In `step()`, for each parameter with task gradient g and distillation gradient g_kd (either may be absent):
    task:    v   <- d on the first step, else m * v + d,   d = g + wd * theta;   theta <- theta - lr * v
    distill: vkd <- g_kd on the first step, else m_kd * vkd + g_kd;              theta <- theta - lr * vkd
where m = mu - delta and m_kd = mu + delta when the parameter got both gradients, and both are mu when it got only
one of them; a parameter with only a distillation gradient gets weight decay in that branch instead (after the first
step, exactly as the reference), so weight decay is counted once. The buffers live in `self.state[p]`
(`momentum_buffer`, `momentum_kd_buffer`), so `state_dict()` checkpoints and resumes them exactly.

The runner drives DOT through the optimizer loss-group protocol (`loss_groups` + `step_group`): the `distill` group
is backpropagated first and handed over with `step_group("distill")`, the `task` group (default: the `ce` term)
last, then `step()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch


class DOT(torch.optim.Optimizer):
    """Distillation-Oriented Trainer: separate task / distillation momenta (mu -/+ delta), weight decay once."""

    # loss groups in backward order; None = every weighted term that no other group claims
    loss_groups: ClassVar[dict[str, tuple[str, ...] | None]] = {"distill": None, "task": ("ce",)}

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        delta: float = 0.075,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0:
            raise ValueError(f"DOT: lr must be >= 0, got {lr}")
        if not 0 <= delta <= momentum:
            raise ValueError(f"DOT: need 0 <= delta <= momentum (task momentum = momentum - delta), got {delta}")
        if weight_decay < 0:
            raise ValueError(f"DOT: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "delta": delta, "weight_decay": weight_decay})
        self._kd_grads: list[list[torch.Tensor | None]] | None = None

    @torch.no_grad()
    def step_kd(self, closure: Any = None) -> Any:
        """Record the distillation gradients now in `.grad`; parameters do not change until `step()`."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._kd_grads = [[p.grad for p in group["params"]] for group in self.param_groups]
        return loss

    def step_group(self, group: str) -> None:
        """Loss-group protocol: the runner hands over each group but the last (here only `distill`)."""
        if group != "distill":
            raise ValueError(f"DOT: unexpected loss group {group!r}; only 'distill' precedes step()")
        self.step_kd()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Apply the task update (gradients in `.grad`) and the recorded distillation update."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kd_grads = self._kd_grads or [[None] * len(g["params"]) for g in self.param_groups]
        for group, kd_group in zip(self.param_groups, kd_grads):
            lr, wd, mu, delta = group["lr"], group["weight_decay"], group["momentum"], group["delta"]
            for p, g_kd in zip(group["params"], kd_group):
                g = p.grad
                state = self.state[p]
                if g is not None:
                    d = g.add(p, alpha=wd) if wd else g
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.detach().clone()
                    else:
                        buf.mul_(mu - delta if g_kd is not None else mu).add_(d)
                    p.add_(buf, alpha=-lr)
                if g_kd is not None:
                    buf = state.get("momentum_kd_buffer")
                    if buf is None:
                        buf = state["momentum_kd_buffer"] = g_kd.detach().clone()
                    elif g is not None:
                        buf.mul_(mu + delta).add_(g_kd)
                    else:
                        buf.mul_(mu).add_(g_kd.add(p, alpha=wd) if wd else g_kd)
                    p.add_(buf, alpha=-lr)
        self._kd_grads = None
        return loss
