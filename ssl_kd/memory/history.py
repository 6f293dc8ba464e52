"""The previous iteration's batch (RecursiveMix's history; any method that looks one step back).

Holds detached clones of named tensors (inputs, soft labels, logits, ...), replaced every step. Registered as stage
state, it is checkpointed, so a run resumed in the middle of an epoch continues with the same history.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Reset = Literal["epoch", "never"]


class BatchHistory:
    """The last ``update``'s tensors, detached. ``reset="epoch"`` empties it at every epoch start (RecursiveMix keeps
    it in a local variable of its epoch loop, so the first step of each epoch has no history); ``"never"`` keeps
    it across epochs. The stage calls ``on_epoch_start`` from its own epoch hook."""

    def __init__(self, reset: Reset = "epoch", device: torch.device | str | None = None) -> None:
        if reset not in ("epoch", "never"):
            raise ValueError(f"history reset must be 'epoch' or 'never', got {reset!r}")
        self.reset = reset
        self.device = None if device is None else torch.device(device)
        self.tensors: dict[str, torch.Tensor] | None = None

    @property
    def empty(self) -> bool:
        return self.tensors is None

    def __getitem__(self, key: str) -> torch.Tensor:
        if self.tensors is None:
            raise KeyError(f"the history is empty (no step has stored '{key}' yet)")
        return self.tensors[key]

    @torch.no_grad()
    def update(self, **tensors: torch.Tensor) -> None:
        """Replace the history with these tensors (detached copies: later in-place edits do not leak in)."""
        self.tensors = {k: t.detach().clone() for k, t in tensors.items()}

    def clear(self) -> None:
        self.tensors = None

    def on_epoch_start(self) -> None:
        if self.reset == "epoch":
            self.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"reset": self.reset, "tensors": self.tensors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tensors = state["tensors"]
        if tensors is not None and self.device is not None:
            tensors = {k: t.to(self.device) for k, t in tensors.items()}
        self.tensors = tensors
