"""The `prune:` block any training stage may carry (StageConfig.prune): filter pruning while the stage trains.

    prune: {method: ghfp, keep_ratio: 0.6}

`method` picks what a pruned filter becomes (papers and reference code: docs/methods/pruning.md):

| method | pruned filter after each mask step | hard filters (weight 0, gradient 0) |
|---|---|---|
| sfp   | zero (and keeps training: it may regrow)                     | none |
| srfp  | times a constant decay d (`decay`, default 0.5)             | none |
| asrfp | times d_e = d0·exp(−a·e), d_E ≈ σ (`decay` = d0, `sigma`)    | none |
| ghfp  | zero, or times d_e when `decay` > 0 (GHFP + ASRFP)          | the λ_e fraction with the smallest norms |

Masks are recomputed from the weights at the stage's start and at the end of every `every`-th epoch and of the
last one. `keep_ramp` (PGMPF's ASFP, `is_asfp`) lowers the kept share from 1 to `keep_ratio` over the stage instead
of pruning `1 − keep_ratio` from the first step. `final_zero` makes the last mask step zero every pruned filter so
the stage ends exportable; by default it does so only when the reference has no d = 0 window of its own
(`decay_off_from` unset). The defaults reproduce the reference (PGMPF on top of he-y's SFP), except where a field
says otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ssl_kd.options import Strict

Method = Literal["sfp", "srfp", "asrfp", "ghfp"]
DEFAULT_DECAY = {"sfp": 0.0, "srfp": 0.5, "asrfp": 1.0, "ghfp": 0.0}


class PruneConfig(Strict):
    method: Method = "sfp"
    keep_ratio: float = Field(0.6, gt=0, le=1)  # filters kept per layer (reference `--rate`)
    scope: Literal["layer", "global"] = "layer"  # layer: each layer keeps keep_ratio; global: all layers together
    include_downsample: bool = False  # reference: downsample / shortcut convs are not pruned
    every: int = Field(1, ge=1)  # epochs between mask refreshes (reference `--epoch_prune`); the last always is one
    models: list[str] | None = None  # default: the models the stage trains
    # decay of the soft-pruned filters: srfp's constant d; asrfp's (and ghfp's, when > 0) d0. None: per method
    decay: float | None = Field(None, ge=0, le=1)
    sigma: float = Field(1e-3, gt=0)  # asymptotic decay: d_E ≈ sigma (reference: 1e-3 from scratch, 1e-5 pretrained)
    decay_off_from: float | None = Field(None, gt=0, le=1)  # from this fraction of the epochs on, d = 0 (PGMPF: 0.8)
    hard_ramp: Literal["cubic", "cosine"] = "cubic"  # ghfp's λ_e: 1 − (1 − (e+1)/E)³, or the reference's cosine
    hard_full_from: float | None = Field(None, gt=0, le=1)  # λ = 1 from this fraction of the epochs on (PGMPF: 0.9)
    # scale the BN weight/bias of a pruned channel with its filter. None: yes when pruned filters decay (srfp, asrfp,
    # ghfp with decay > 0: PGMPF's prune_bn), no when they are zeroed (sfp, ghfp with decay 0: he-y's SFP masks the
    # conv only; a zeroed BN weight would also zero the filter's gradient, so a soft filter could never regrow)
    mask_bn: bool | None = None
    hold_hard: bool = False  # re-zero hard filters after every optimizer step (reference: only the gradient is masked)
    # the last mask step zeroes every pruned filter (d = 0): the stage ends exportable. None: true without a
    # `decay_off_from` window (ours), false with one (the reference: its window decides, so E <= 4 epochs end at
    # d0·exp(−a·(E−1)) > 0, e.g. with PGMPF's 0.8 window)
    final_zero: bool | None = None
    # PGMPF's ASFP (`is_asfp`): the kept share per mask step goes 1 -> keep_ratio. none: keep_ratio from the start
    # (SFP, the GHFP/ASRFP papers); exp: r + (1 - r)·exp(-k·e), k = ln 4 / (E/8) (PGMPF's script); poly: cubic
    keep_ramp: Literal["none", "exp", "poly"] = "none"
    keep_ramp_end: float = Field(0.9, gt=0, le=1)  # keep_ratio itself from this fraction of the epochs on (PGMPF 0.9)

    @model_validator(mode="after")
    def _decay(self) -> PruneConfig:
        if self.decay is None:
            self.decay = DEFAULT_DECAY[self.method]
        if self.mask_bn is None:
            self.mask_bn = self.decay > 0
        if self.final_zero is None:
            self.final_zero = self.decay_off_from is None
        if self.method == "sfp" and self.decay != 0:
            raise ValueError("decay: sfp zeroes pruned filters (decay 0); a decay > 0 is srfp or asrfp")
        if self.method in ("srfp", "asrfp") and self.decay == 0:
            raise ValueError(f"decay: {self.method} needs a decay in (0, 1]; decay 0 is sfp")
        if self.method != "ghfp" and (self.hard_full_from is not None or self.hard_ramp != "cubic"):
            raise ValueError("hard_ramp / hard_full_from: only ghfp has hard filters")
        return self
