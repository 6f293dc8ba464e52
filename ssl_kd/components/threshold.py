"""Confidence-threshold policies of the FixMatch family, chosen by config (`threshold: fixed | flex`).

A policy turns the weak view's confidence and pseudo-label into the mask of samples that enter the consistency
loss, and may learn from every step (`update`). The FlexMatch policy keeps one global history over all
processes: `update` gathers every rank's batch, which equals 1-GPU training with the global batch (the reference
keeps one history per rank).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ssl_kd import dist
from ssl_kd.memory import PseudoLabelHistory


class ThresholdPolicy(Protocol):
    def thresholds(self, pseudo_label: torch.Tensor) -> torch.Tensor:
        """The threshold of each sample (or a 0-dim tensor/float for all), read before this step's update."""
        ...

    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor) -> None: ...

    def diagnostics(self) -> dict[str, torch.Tensor]: ...

    def eval_extras(self) -> dict[str, Any]: ...


class FixedThreshold:
    """FixMatch: one fixed tau for every class."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def thresholds(self, pseudo_label: torch.Tensor) -> float:
        return self.tau

    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor) -> None:
        pass

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {}

    def eval_extras(self) -> dict[str, Any]:
        return {}


class FlexThreshold:
    """FlexMatch's curriculum: class c's threshold is tau * M(beta_c), beta from the history of confident labels.

    The per-class thresholds are computed once per step from the history as it stood before the step (TorchSSL's
    order); `update` then records the step's confident predictions (by the fixed tau) of every rank.
    """

    def __init__(self, num_samples: int, num_classes: int, tau: float, warmup: bool, device: torch.device) -> None:
        self.history = PseudoLabelHistory(num_samples, num_classes, tau, warmup, device)
        self._class_thresholds: torch.Tensor | None = None

    def thresholds(self, pseudo_label: torch.Tensor) -> torch.Tensor:
        self._class_thresholds = self.history.class_thresholds()
        return self._class_thresholds[pseudo_label]

    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor) -> None:
        self.history.update(dist.gather(index), dist.gather(confidence), dist.gather(pseudo_label))

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {"threshold": self._class_thresholds.mean()} if self._class_thresholds is not None else {}

    def eval_extras(self) -> dict[str, Any]:
        return {"class_thresholds": [round(v, 5) for v in self.history.class_thresholds().tolist()]}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.history.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.history.load_state_dict(state)


def build_threshold(
    name: str, *, tau: float, num_samples: int, num_classes: int, flex_warmup: bool, device: torch.device
) -> FixedThreshold | FlexThreshold:
    if name == "fixed":
        return FixedThreshold(tau)
    if name == "flex":
        return FlexThreshold(num_samples, num_classes, tau, flex_warmup, device)
    raise ValueError(f"unknown threshold policy {name!r}; valid: fixed, flex")
