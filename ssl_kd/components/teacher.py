"""A frozen teacher: eval mode, no graph, optionally its logits cached per training image.

The discipline every teacher-student method needs in one place (DM-KD's reference, zhengli97/DM-KD@bbab9ce8
helper/loops.py, forgets no_grad: same results, more memory): the teacher is called under `torch.no_grad()` and in
eval mode whatever the caller forgets, and with `cache=True` (only valid when the teacher sees the same input for an
image every epoch) each image's logits are computed once and then reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ssl_kd.memory import TeacherLogitCache


class Teacher:
    """`teacher(x, idx)` -> logits; `teacher.output(x)` -> the full model output (features too), never cached.

    `get_model` returns the model to call (resolved at call time: the runner prepares models after set-up).
    """

    def __init__(self, get_model: Callable[[], nn.Module], cache_size: int | None = None) -> None:
        self.get_model = get_model
        self.cache = TeacherLogitCache(cache_size) if cache_size is not None else None

    @torch.no_grad()
    def output(self, x: torch.Tensor, **inputs: Any) -> Any:
        model = self.get_model()
        if model.training:
            model.eval()
        return model(x, **inputs)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None, **inputs: Any) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return self.output(x, **inputs).logits

        if self.cache is None:
            return compute()
        if idx is None:
            raise ValueError("a cached teacher needs the sample indices (batch['idx'])")
        return self.cache.lookup(idx, compute)

    # a cached teacher is checkpointed with the stage (register it as state)
    def state_dict(self) -> dict[str, Any]:
        return self.cache.state_dict() if self.cache is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.cache is not None:
            self.cache.load_state_dict(state)
