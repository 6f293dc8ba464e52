"""The stage-side component: one model's filter masks, recomputed from its weights and applied to them.

`refresh(keep_ratio, hard_fraction, decay)` is the reference's `init_mask` + `do_mask`: select the pruned and
the hard filters of every unit from the current weights, then multiply each filter by 1 (kept), d (soft) or 0
(hard), and the BN weight and bias of each pruned channel by d. `mask_grads()` zeroes the hard filters' gradients
(GHFP, after backward); `zero_hard()` puts hard filters back to zero after an optimizer step whose momentum or
weight decay moved them (an option: the reference only masks the gradient). The masks are the component's state
(checkpointed), so a resumed run masks gradients exactly as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ssl_kd.prune.functional import bn_factors, ghfp_masks, global_masks, mask_factors
from ssl_kd.prune.units import Unit, prunable_units


class FilterPruner:
    def __init__(
        self, model: nn.Module, *, scope: str = "layer", include_downsample: bool = False, mask_bn: bool = True,
        where: str = "prune",
    ) -> None:  # fmt: skip
        self.model = model
        self.scope = scope
        self.mask_bn = mask_bn
        self.units: list[Unit] = [
            u for u in prunable_units(model, where) if include_downsample or u.role != "shortcut"
        ]  # reference: downsample convs are skipped by default (`--skip_downsample 1`)
        self.kept: dict[str, Tensor] = {}
        self.hard: dict[str, Tensor] = {}
        for u in self.units:
            n = self._conv(model, u).out_channels
            self.kept[u.name] = torch.ones(n, dtype=torch.bool)
            self.hard[u.name] = torch.zeros(n, dtype=torch.bool)
        self._masks_changed()

    def _masks_changed(self) -> None:
        """The per-step masking reads the hard masks from here: whether a unit has any (decided on the host when
        the masks change), and their copies on the device (made once), so a step neither reads a value nor copies."""
        self._any_hard = {name: bool(h.any()) for name, h in self.hard.items()}
        self._hard_on_device: dict[tuple[str, torch.device], Tensor] = {}

    def _hard_on(self, name: str, like: Tensor) -> Tensor:
        """Unit `name`'s hard mask on `like`'s device, shaped to broadcast over its filters (dim 0)."""
        key = (name, like.device)
        if key not in self._hard_on_device:
            self._hard_on_device[key] = self.hard[name].to(like.device)
        return self._hard_on_device[key].view(-1, *([1] * (like.dim() - 1)))

    @staticmethod
    def _conv(model: nn.Module, unit: Unit) -> nn.Conv2d:
        return model.get_submodule(unit.name)

    @torch.no_grad()
    def select(self, keep_ratio: float, hard_fraction: float = 0.0) -> None:
        """Recompute which filters are pruned and which of those are hard, from the current weights."""
        weights = [self._conv(self.model, u).weight for u in self.units]
        if self.scope == "global":
            kept, hard = global_masks(weights, keep_ratio, hard_fraction)
        else:
            kept, hard = zip(*(ghfp_masks(w, keep_ratio, hard_fraction) for w in weights))
        for u, k, h in zip(self.units, kept, hard):
            self.kept[u.name], self.hard[u.name] = k.cpu(), h.cpu()
        self._masks_changed()

    @torch.no_grad()
    def apply(self, decay: float, models: Iterable[nn.Module] = (), mask_bn: bool | None = None) -> None:
        """One mask step on the model (and on copies of it, e.g. its EMA): kept x1, soft x d, hard x0; BN x d
        (when `mask_bn`, default: the pruner's setting)."""
        mask_bn = self.mask_bn if mask_bn is None else mask_bn
        for model in (self.model, *models):
            for u in self.units:
                kept, hard = self.kept[u.name], self.hard[u.name]
                conv = self._conv(model, u)
                f = mask_factors(kept, hard, decay).to(conv.weight)
                conv.weight.mul_(f.view(-1, 1, 1, 1))
                if conv.bias is not None:
                    conv.bias.mul_(f)
                if getattr(conv, "fold", None) is not None:  # an exported conv's folded inputs are part of its filters
                    conv.fold.mul_(f.view(-1, 1, 1, 1))
                if mask_bn and u.bn is not None:
                    bn = model.get_submodule(u.bn)
                    g = bn_factors(kept, decay).to(bn.weight)
                    bn.weight.mul_(g)
                    bn.bias.mul_(g)

    def refresh(
        self, keep_ratio: float, hard_fraction: float, decay: float, models: Iterable[nn.Module] = (),
        mask_bn: bool | None = None,
    ) -> None:  # fmt: skip
        self.select(keep_ratio, hard_fraction)
        self.apply(decay, models, mask_bn)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """GHFP: a hard filter gets no gradient (reference: `grad[mat_hard == 0] = 0` after backward)."""
        for u in self.units:
            if not self._any_hard[u.name]:
                continue
            conv = self._conv(self.model, u)
            for p in (conv.weight, conv.bias):
                if p is not None and p.grad is not None:
                    p.grad.masked_fill_(self._hard_on(u.name, p.grad), 0)

    @torch.no_grad()
    def zero_hard(self) -> None:
        """Put the hard filters back to exactly zero (after an optimizer step moved them through momentum)."""
        for u in self.units:
            if self._any_hard[u.name]:
                conv = self._conv(self.model, u)
                for t in (conv.weight, conv.bias, getattr(conv, "fold", None)):
                    if t is not None:
                        t.masked_fill_(self._hard_on(u.name, t), 0)

    def stats(self) -> dict[str, float]:
        """Fraction of the prunable filters kept, and fraction hard."""
        total = sum(len(k) for k in self.kept.values())
        return {
            "kept": sum(int(k.sum()) for k in self.kept.values()) / total,
            "hard": sum(int(h.sum()) for h in self.hard.values()) / total,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"kept": dict(self.kept), "hard": dict(self.hard)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("kept", "hard"):
            current = getattr(self, key)
            if set(state[key]) != set(current):
                raise ValueError(f"prune masks of another model: units {sorted(state[key])} vs {sorted(current)}")
            for name, mask in state[key].items():
                current[name] = mask.to(torch.bool).cpu()
        self._masks_changed()
