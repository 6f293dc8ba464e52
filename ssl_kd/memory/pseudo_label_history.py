"""FlexMatch's per-sample history of confident predictions (`selected_label`), kept on the device.

Checkpointed through `state_dict`, unlike TorchSSL (whose resumed runs restart the curriculum).
"""

from __future__ import annotations

import torch

from ssl_kd.losses.ssl import convex_mapping, flexmatch_beta, history_counts


class PseudoLabelHistory:
    """selected_label[i] = the last class predicted for unlabelled sample i with confidence >= tau (or -1).

    beta is recomputed from the history at the start of each step (TorchSSL's order); when every entry holds
    the same value (e.g. all -1 at the start) the previous beta is kept, as the references do, so the first
    thresholds are 0 and every sample passes until the first confident prediction.
    """

    def __init__(self, num_samples: int, num_classes: int, tau: float, warmup: bool, device: torch.device) -> None:
        self.num_classes, self.tau, self.warmup = num_classes, tau, warmup
        self.selected_label = torch.full((num_samples,), -1, dtype=torch.long, device=device)
        self.beta = torch.zeros(num_classes, device=device)

    def class_thresholds(self) -> torch.Tensor:
        """tau * M(beta_c) for the current history, shape (C,)."""
        counts = history_counts(self.selected_label, self.num_classes)  # no bincount: no host sync
        degenerate = counts.max() >= self.selected_label.numel()  # all entries one value: keep the old beta
        fresh = flexmatch_beta(self.selected_label, self.num_classes, self.warmup, counts=counts)
        self.beta = torch.where(degenerate, self.beta, fresh)
        return self.tau * convex_mapping(self.beta)

    @torch.no_grad()
    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo_label: torch.Tensor) -> None:
        """Record samples predicted with the *fixed* tau (not the flexible threshold), as the references do."""
        sure = confidence >= self.tau
        # where/scatter instead of boolean indexing: no host sync for the number of confident samples
        current = self.selected_label.index_select(0, index)
        self.selected_label.index_copy_(0, index, torch.where(sure, pseudo_label.to(current.dtype), current))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"selected_label": self.selected_label, "beta": self.beta}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.selected_label = state["selected_label"].to(self.selected_label.device)
        self.beta = state["beta"].to(self.beta.device)
