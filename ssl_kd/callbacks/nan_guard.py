"""Stop on a non-finite loss term, keep the last good checkpoint, and name the term."""

from __future__ import annotations

from typing import Any

import torch

from ssl_kd.engine.callback import Callback, CallbackOrder


class NanGuard(Callback):
    """Flags accumulate on the device every step (no host sync); they are read when something would act on the
    weights (log, eval, checkpoint, stage end), so a diverged model is never saved or reported."""

    order = CallbackOrder.GUARD

    def __init__(self) -> None:
        self.bad: dict[str, torch.Tensor] = {}
        self.first_step: torch.Tensor | None = None

    def on_step_end(self, runner, terms: dict[str, Any]) -> None:
        step = runner.stage.progress.step
        for k, v in terms.items():
            nf = ~torch.isfinite(v).all()
            if k in self.bad:
                self.bad[k] |= nf
            else:
                self.bad[k] = nf
            if k == "loss":
                if self.first_step is None:
                    self.first_step = torch.full((), -1, dtype=torch.long, device=v.device)
                self.first_step = torch.where((self.first_step < 0) & nf, step, self.first_step)

    def check(self, runner) -> None:
        from ssl_kd.engine.runner import TrainingStopped

        if not self.bad:
            return
        names = sorted(self.bad)
        flags = torch.stack([self.bad[k] for k in names]).tolist()
        if not any(flags):
            return
        culprits = [k for k, f in zip(names, flags) if f and k != "loss"] or ["loss"]
        step = int(self.first_step.item()) if self.first_step is not None else -1
        last = runner.run_dir.last
        kept = f"the last good checkpoint is kept: {last}" if last.exists() else "no checkpoint had been written yet"
        raise TrainingStopped(
            f"stage '{runner.stage.name}': loss term(s) {culprits} became NaN/inf (first at step {step}); "
            f"training stopped and {kept}. Lower the learning rate, enable clip_grad_norm, or check the data."
        )

    on_epoch_end = check  # type: ignore[assignment]
    on_stage_end = check  # type: ignore[assignment]
