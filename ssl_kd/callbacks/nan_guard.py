"""Stop on a non-finite loss term, keep the last good checkpoint, name the term, and record the stop (a `stop`
record in metrics.jsonl: reason, terms, first step)."""

from __future__ import annotations

from typing import Any

import torch

from ssl_kd.engine.callback import Callback, CallbackOrder
from ssl_kd.errors import TrainingStopped


class NanGuard(Callback):
    """Flags accumulate on the device every step (no host sync); they are read when something would act on the
    weights (log, eval, checkpoint, stage end), so a diverged model is never saved or reported."""

    order = CallbackOrder.GUARD

    def __init__(self) -> None:
        self.first: dict[str, torch.Tensor] = {}  # per term: the first step it was non-finite, -1 if never

    def on_step_end(self, runner, terms: dict[str, Any]) -> None:
        step = runner.stage.progress.step
        for k, v in terms.items():
            nf = ~torch.isfinite(v).all()
            first = self.first.get(k)
            if first is None:
                first = self.first[k] = torch.full((), -1, dtype=torch.long, device=v.device)
            self.first[k] = torch.where((first < 0) & nf, step, first)

    def check(self, runner) -> None:
        if not self.first:
            return
        names = sorted(self.first)
        steps = dict(zip(names, torch.stack([self.first[k] for k in names]).tolist()))
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
