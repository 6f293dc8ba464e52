"""Confidence-threshold policies of the FixMatch family, a registered option block of the SSL stages:

    threshold: fixed                              = {type: fixed, tau: 0.95}     FixMatch
    threshold: {type: flex, tau: 0.95, warmup: true}                              FlexMatch

A policy turns the weak view's confidence and pseudo-label into the mask of samples that enter the consistency
loss, and may learn from every step (`update`); what it learns is its checkpointed state. The FlexMatch policy
keeps one global history over all processes: `update` gathers every rank's batch, which equals 1-GPU training with
the global batch (the reference keeps one history per rank). A new policy is one class with an `Options` block and
one `@THRESHOLD.register(name)` line; it provides `thresholds`, `update`, `diagnostics` and `eval_extras`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ssl_kd import dist
from ssl_kd.components.policy import PolicyOptions, PolicyRegistry
from ssl_kd.memory import PseudoLabelHistory


class ThresholdOptions(PolicyOptions):
    """Keys every threshold policy has: its name and the confidence threshold tau (FullMatch's EML/ANL read it too)."""

    type: str = "fixed"
    tau: float = Field(0.95, gt=0, le=1)


THRESHOLD = PolicyRegistry(
    "threshold policy", "type", ThresholdOptions, shorthand=lambda v: {"type": v} if isinstance(v, str) else v
)


@THRESHOLD.register("fixed")
class FixedThreshold:
    """FixMatch: one fixed tau for every class."""

    class Options(ThresholdOptions):
        type: Literal["fixed"] = "fixed"

    def __init__(self, opts: ThresholdOptions, **context: Any) -> None:
        self.tau = opts.tau

    def thresholds(self, pseudo_label: torch.Tensor) -> float:
        return self.tau

    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor) -> None:
        pass

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {}

    def eval_extras(self) -> dict[str, Any]:
        return {}


@THRESHOLD.register("flex")
class FlexThreshold:
    """FlexMatch's curriculum: class c's threshold is tau * M(beta_c), beta from the history of confident labels.

    The per-class thresholds are computed once per step from the history as it stood before the step (TorchSSL's
    order); `update` then records the step's confident predictions (by the fixed tau) of every rank.
    """

    class Options(ThresholdOptions):
        type: Literal["flex"] = "flex"
        warmup: bool = True  # FlexMatch's threshold warm-up (unused samples count in the normaliser)

    def __init__(
        self, opts: Options, *, num_samples: int, num_classes: int, device: torch.device, **context: Any
    ) -> None:
        self.history = PseudoLabelHistory(num_samples, num_classes, opts.tau, opts.warmup, device)
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
