"""Stop on a non-finite loss term, keep the last good checkpoint, name the term, and record the stop (a `stop`
record in metrics.jsonl: reason, terms, first step)."""

from __future__ import annotations

from typing import Any

import torch

from ssl_kd.engine.callback import Callback, CallbackOrder
from ssl_kd.errors import TrainingStopped


class NanGuard(Callback):
    """Flags accumulate on the device every step (no host sync); they are read when something would act on the
    weights (log, eval, checkpoint, stage end), so a diverged model is never saved or reported. Per step, the
    scalar terms are checked as one stacked vector (a few kernels, not several per term)."""

    order = CallbackOrder.GUARD

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self.steps: torch.Tensor | None = None  # per term of `keys`: the first step it was non-finite, -1 if never

    @property
    def first(self) -> dict[str, torch.Tensor]:
        return {} if self.steps is None else dict(zip(self.keys, self.steps.unbind()))

    def on_step_end(self, runner, terms: dict[str, Any]) -> None:
        if not terms:
            return
        step = runner.stage.progress.step
        keys = tuple(terms)
        if keys != self.keys:  # the first step, or the stage's terms changed: keep what is known by name
            known = self.first
            device = next(iter(terms.values())).device
            fresh = torch.full((), -1, dtype=torch.long, device=device)
            self.keys = keys
            self.steps = torch.stack([known.get(k, fresh) for k in keys])
        values = list(terms.values())
        if all(v.dim() == 0 for v in values):
            bad = ~torch.isfinite(torch.stack(values))  # promoted to the widest dtype: no value changes class
        else:
            bad = torch.stack([~torch.isfinite(v).all() for v in values])
        self.steps = torch.where((self.steps < 0) & bad, step, self.steps)

    def check(self, runner) -> None:
        if self.steps is None:
            return
        steps = dict(sorted(zip(self.keys, self.steps.tolist())))
        bad = {k: s for k, s in steps.items() if s >= 0}
        if not bad:
            return
        step = min(bad.values())
        # the term that went first is the cause; the others follow from the poisoned weights
        culprits = [k for k, s in bad.items() if s == step and k != "loss"] or ["loss"]
        last = runner.run_dir.last
        kept = f"the last good checkpoint is kept: {last}" if last.exists() else "no checkpoint had been written yet"
        # in metrics.jsonl too, so the report and the summary show the stage as stopped, not as "not run"
        runner.log({"kind": "stop", "reason": "non-finite loss", "terms": culprits, "first_step": step})
        raise TrainingStopped(
            f"stage '{runner.stage.name}': loss term(s) {culprits} became NaN/inf (first at step {step}); "
            f"training stopped and {kept}. Lower the learning rate, enable clip_grad_norm, or check the data."
        )

    on_epoch_end = check  # type: ignore[assignment]
    on_stage_end = check  # type: ignore[assignment]
