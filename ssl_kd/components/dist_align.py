"""Distribution alignment of the weak view's probabilities, a registered option block of the SSL stages:

    dist_align: none                                   no alignment (FixMatch, FreeMatch, ...)
    dist_align: {type: uniform, momentum: 0.999}       towards the uniform distribution (SoftMatch)
    dist_align: {type: labelled, momentum: 0.999}      towards the EMA of the labelled batch's predictions (AdaMatch)

p~ = Normalise(p * (p_target + 1e-6) / (p_model + 1e-6)), p_model the EMA of the mean unlabelled prediction (the
first step's mean at the start), p_target uniform or the EMA of the mean labelled prediction (uniform at the start)
(microsoft/Semi-supervised-learning = semilearn 0.3.2, semilearn/algorithms/hooks/dist_align.py DistAlignEMAHook).
The statistics are updated, then used, on every step; they are means over the global batch (every rank's rows
gathered, as USB gathers them), so 2 processes equal 1, and they are checkpointed state.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ssl_kd import dist
from ssl_kd.components.policy import PolicyOptions, PolicyRegistry
from ssl_kd.losses.ssl import align_distribution, ema_


class DistAlignOptions(PolicyOptions):
    type: str = "none"


DIST_ALIGN = PolicyRegistry(
    "distribution alignment", "type", DistAlignOptions, shorthand=lambda v: {"type": v} if isinstance(v, str) else v
)


@DIST_ALIGN.register("none")
class NoAlignment:
    """The probabilities as they are."""

    class Options(DistAlignOptions):
        type: Literal["none"] = "none"

    def __init__(self, opts: DistAlignOptions, **context: Any) -> None:
        pass

    def __call__(self, probs_u: torch.Tensor, probs_l: torch.Tensor | None = None) -> torch.Tensor:
        return probs_u

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {}


class _EMAAlignment:
    """Shared by `uniform` and `labelled`: the EMA of the unlabelled mean (and of the labelled mean)."""

    track_target = False

    class Options(DistAlignOptions):
        momentum: float = Field(0.999, ge=0, lt=1)  # USB's ema_p

    def __init__(self, opts: Options, *, num_classes: int, device: torch.device, **context: Any) -> None:
        self.m = opts.momentum
        self.p_model = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.p_target = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.started = torch.zeros((), dtype=torch.bool, device=device)  # USB: p_model = None until the first step

    @torch.no_grad()
    def __call__(self, probs_u: torch.Tensor, probs_l: torch.Tensor | None = None) -> torch.Tensor:
        mean_u = dist.gather(probs_u.detach()).mean(dim=0)
        self.p_model = torch.where(self.started, ema_(self.p_model, mean_u, self.m), mean_u)
        self.started = torch.ones_like(self.started)
        if self.track_target:
            if probs_l is None:
                raise ValueError("labelled distribution alignment needs the labelled batch's probabilities")
            self.p_target = ema_(self.p_target, dist.gather(probs_l.detach()).mean(dim=0), self.m)
        return align_distribution(probs_u, self.p_target, self.p_model)

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"p_model": self.p_model, "p_target": self.p_target, "started": self.started}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in ("p_model", "p_target", "started"):
            setattr(self, k, state[k].to(getattr(self, k).device))


@DIST_ALIGN.register("uniform")
class UniformAlignment(_EMAAlignment):
    """SoftMatch's uniform alignment (p_target = 1/C)."""

    class Options(_EMAAlignment.Options):
        type: Literal["uniform"] = "uniform"


@DIST_ALIGN.register("labelled")
class LabelledAlignment(_EMAAlignment):
    """AdaMatch's alignment: p_target = the EMA of the labelled batch's mean prediction."""

    track_target = True

    class Options(_EMAAlignment.Options):
        type: Literal["labelled"] = "labelled"
