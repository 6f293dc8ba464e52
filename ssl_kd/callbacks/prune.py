"""Filter pruning while a stage trains: the `prune:` block of any training stage (ssl_kd/prune/config.py).

Lifecycle, as the reference (he-y's SFP, PGMPF's soft -> hard masks) runs it:

    stage start         select masks from the starting weights with epoch 0's values and apply them (with
                        `keep_ramp: exp` epoch 0 keeps every filter, as PGMPF's ASFP)
    after backward      GHFP: hard filters get no gradient (every loss group of a grouped strategy)
    step end            optional (`hold_hard`): hard filters back to 0 after momentum / weight decay moved them
    end of epoch e      every `every` epochs and at the last: reselect from the weights, apply (before evaluation
                        and checkpoints see the epoch: what is scored and saved is the masked model)

λ_e (GHFP) and d_e (ASRFP) are scheduled scalars (`ssl_kd.components.schedule`): cubic and exponential ramps
over the stage's epochs, equal to `ssl_kd.prune.ghfp_hard_fraction` / `asrfp_decay` (tests check it). The masks
are this callback's checkpointed state, so a resume across a mask refresh is bit-exact. With EMA on, each mask step
is applied to the EMA model too, so the evaluated (and, with `apply_at_end`, the final) weights are pruned.
"""

from __future__ import annotations

import math
from typing import Any

from ssl_kd.components import Schedule, ramp
from ssl_kd.engine.callback import Callback, CallbackOrder
from ssl_kd.prune import DECAY_FLOOR, FilterPruner, PruneConfig, asfp_keep_ratio


def decay_schedule(cfg: PruneConfig, total_epochs: int) -> Schedule:
    """d_e as a schedule over the stage's epochs (0-based): constant (sfp, srfp, ghfp with decay 0) or ASRFP's
    d0·exp(−a·e) with a = −ln(σ/(d0 + 0.01σ))/E, i.e. exponential from d0 to d0·σ/(d0 + 0.01σ) over E epochs."""
    d0 = float(cfg.decay or 0.0)
    if cfg.method in ("sfp", "srfp") or d0 == 0:
        return ramp("constant", d0, d0, total_epochs)
    end = d0 * cfg.sigma / (d0 + 0.01 * cfg.sigma)
    return ramp("exponential", d0, end, total_epochs)


def hard_schedule(cfg: PruneConfig, total_epochs: int) -> Schedule | None:
    """λ_e (ghfp only): the cubic ramp 1 − (1 − (e+1)/E)³ (one-based epochs), or the reference's cosine
    (1 − cos(π e / L))/2 over L = hard_full_from·E epochs (the reference's L is 0.9 E)."""
    if cfg.method != "ghfp":
        return None
    if cfg.hard_ramp == "cubic":
        return ramp("cubic", 0.0, 1.0, total_epochs, one_based=True)
    return ramp("cosine", 0.0, 1.0, (cfg.hard_full_from or 1.0) * total_epochs)


class Prune(Callback):
    order = CallbackOrder.WEIGHTS

    def __init__(self, runner, stage) -> None:
        self.cfg: PruneConfig = stage.cfg.prune
        where = f"stages.{stage.name}.prune"
        self.names = self.cfg.models or list(stage.cfg.train)
        self.pruners = {
            n: FilterPruner(
                runner.models[n], scope=self.cfg.scope, include_downsample=self.cfg.include_downsample,
                mask_bn=self.cfg.mask_bn, where=f"{where} (model '{n}')",
            )
            for n in self.names
        }  # fmt: skip
        prog = stage.progress
        self.spe = prog.steps_per_epoch
        self.total_epochs = max(1, math.ceil(prog.total_steps / max(1, prog.steps_per_epoch)))
        self.decay = decay_schedule(self.cfg, self.total_epochs)
        self.hard = hard_schedule(self.cfg, self.total_epochs)
        self.started = False

    # ------------------------------------------------------------------ values at epoch e (0-based)
    def _at(self, schedule: Schedule, epoch: int) -> float:
        return schedule.at(epoch * self.spe, self.spe, self.total_epochs * self.spe)

    def values(self, epoch: int) -> tuple[float, float]:
        """(λ_e, d_e) used by the mask step after epoch `epoch`."""
        c, e, total = self.cfg, epoch, self.total_epochs
        lam = 0.0 if self.hard is None else self._at(self.hard, e)
        if self.hard is not None and c.hard_full_from is not None and e >= c.hard_full_from * total:
            lam = 1.0
        d = self._at(self.decay, e)
        if self.cfg.method in ("asrfp", "ghfp") and d < DECAY_FLOOR:
            d = 0.0  # ASRFP's d is 0 once below the reference's `do_mask` threshold
        if c.decay_off_from is not None and e >= c.decay_off_from * total:
            d = 0.0
        return lam, d

    def keep(self, epoch: int) -> float:
        """The kept share of the mask step after epoch `epoch`: keep_ratio, or PGMPF's ASFP ramp towards it."""
        c = self.cfg
        if c.keep_ramp == "none":
            return c.keep_ratio
        return asfp_keep_ratio(epoch, self.total_epochs, c.keep_ratio, c.keep_ramp, c.keep_ramp_end)

    def _refresh(self, runner, epoch: int, final: bool) -> None:
        lam, d = self.values(epoch)
        keep = self.keep(epoch)
        if final and self.cfg.final_zero:  # pruned filters leave the stage at zero: the export removes them
            d = 0.0
        record: dict[str, Any] = {"kind": "prune", "prune/lambda": lam, "prune/decay": d}
        if self.cfg.keep_ramp != "none":
            record["prune/keep"] = keep
        for n, p in self.pruners.items():
            ema = runner.stage.ema_models.get(n)
            p.refresh(keep, lam, d, [ema.module] if ema is not None else [])
            record.update({f"prune/{n}/{k}": v for k, v in p.stats().items()})
        runner.log(record)

    # ------------------------------------------------------------------ lifecycle
    def on_stage_start(self, runner) -> None:
        if not self.started:  # a resumed stage has its masks (and masked weights) from the checkpoint
            self._refresh(runner, 0, final=runner.stage.progress.total_steps == 0)
            self.started = True

    def on_after_backward(self, runner) -> None:
        for p in self.pruners.values():
            p.mask_grads()

    def on_step_end(self, runner, terms) -> None:
        if self.cfg.hold_hard:
            for p in self.pruners.values():
                p.zero_hard()

    def on_epoch_end(self, runner) -> None:
        prog = runner.stage.progress
        epoch = (prog.step - 1) // self.spe
        final = prog.step == prog.total_steps
        if epoch % self.cfg.every == 0 or final:
            self._refresh(runner, epoch, final)

    def state_dict(self) -> dict[str, Any]:
        return {"started": self.started, "masks": {n: p.state_dict() for n, p in self.pruners.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.started = state["started"]
            for n, s in state["masks"].items():
                self.pruners[n].load_state_dict(s)
