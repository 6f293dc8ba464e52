"""Teacher logits cached per training image (for distillation from a fixed teacher on fixed inputs)."""

from __future__ import annotations

from typing import Any

import torch


class TeacherLogitCache:
    """Teacher logits per training image, filled the first time an image is seen; checkpointed with the stage.

    Valid only because the teacher's input for an image never changes (no augmentation, frozen eval-mode teacher).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.logits: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None

    def lookup(self, idx: torch.Tensor, compute: Any) -> torch.Tensor:
        if self.logits is not None and self.logits.device != idx.device:  # restored from a CPU checkpoint
            self.logits, self.filled = self.logits.to(idx.device), self.filled.to(idx.device)
        if self.logits is not None and bool(self.filled[idx].all()):
            return self.logits[idx]
        out = compute()
        if self.logits is None:
            self.logits = out.new_zeros(self.size, out.shape[1])
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=out.device)
        self.logits[idx] = out
        self.filled[idx] = True
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"logits": self.logits, "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logits, self.filled = state["logits"], state["filled"]
