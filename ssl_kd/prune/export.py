"""Export a filter-pruned model as the physically smaller network: pruned filters removed, their BN channels sliced,
the input channels of the conv that read them cut (models/pruned.py describes the shape).

A filter counts as pruned when its weights are all zero: a prune stage ends that way (its last mask step zeroes
every pruned filter, `prune.final_zero`). The check compares the small network with the *masked* model (the
trained one with the BN weight and bias of every removed channel set to zero, which a stage with `prune.mask_bn`
already did) on random inputs, in eval mode; FLOPs are counted by torch.utils.flop_counter.FlopCounterMode.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ssl_kd.errors import UserError
from ssl_kd.models import create_model_from_spec, model_spec
from ssl_kd.prune.units import Unit, prunable_units


@dataclass
class ExportResult:
    model: nn.Module  # the small network (eval mode)
    channels: dict[str, int]  # its `channels` option: filters kept per narrowed conv
    params: tuple[int, int]  # (before, after)
    flops: tuple[int, int]  # (before, after) per image, FlopCounterMode's count (2 per multiply-add)
    max_abs_diff: float  # small vs masked model, on random inputs
    masking_diff: float  # masked vs trained model (> 0 only when BN channels of zero filters were not masked)

    def describe(self, name: str = "model") -> str:
        (p0, p1), (f0, f1) = self.params, self.flops
        narrowed = len(self.channels)
        return "\n".join(
            [
                f"{name}: {narrowed} conv(s) narrowed",
                f"  params {p0:,} -> {p1:,} ({100 * p1 / p0:.1f}% kept)",
                f"  FLOPs  {f0:,} -> {f1:,} per image ({100 * f1 / f0:.1f}% kept, FlopCounterMode)",
                f"  max |small - masked| = {self.max_abs_diff:.3g} on random inputs",
                *(
                    [f"  note: zeroing the BN of removed channels changed outputs by up to {self.masking_diff:.3g}"]
                    if self.masking_diff > 0
                    else []
                ),
            ]
        )


def _pruned_filters(conv: nn.Conv2d) -> Tensor:
    """True for each filter that is entirely zero (weight and bias)."""
    zero = conv.weight.detach().flatten(1).eq(0).all(dim=1)
    if conv.bias is not None:
        zero &= conv.bias.detach().eq(0)
    return zero.cpu()


def kept_filters(model: nn.Module, where: str = "export") -> dict[str, Tensor]:
    """Per prunable conv, True for the filters to keep (every non-zero one; at least one per conv)."""
    out = {}
    for u in prunable_units(model, where):
        kept = ~_pruned_filters(model.get_submodule(u.name))
        if not kept.any():
            kept[0] = True  # an all-zero conv still needs one (zero) filter: the shape must stay valid
        out[u.name] = kept
    return out


def masked_copy(model: nn.Module, kept: dict[str, Tensor]) -> nn.Module:
    """The trained model with every removed filter's BN channel zeroed (what the small network computes)."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for u in prunable_units(model):
            drop = ~kept[u.name]
            conv = masked.get_submodule(u.name)
            conv.weight[drop.to(conv.weight.device)] = 0
            if u.bn is not None and drop.any():
                bn = masked.get_submodule(u.bn)
                bn.weight[drop.to(bn.weight.device)] = 0
                bn.bias[drop.to(bn.bias.device)] = 0
    return masked


def _slice_state(state: dict[str, Tensor], units: list[Unit], kept: dict[str, Tensor]) -> dict[str, Tensor]:
    state = dict(state)
    for u in units:
        k = kept[u.name]
        if bool(k.all()):
            continue
        idx = k.nonzero().flatten()
        for suffix in ("weight", "bias"):
            key = f"{u.name}.{suffix}"
            if key in state:
                state[key] = state[key][idx.to(state[key].device)]
        if u.bn is not None:
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                key = f"{u.bn}.{suffix}"
                state[key] = state[key][idx.to(state[key].device)]
        if u.consumer is not None:
            key = f"{u.consumer}.weight"
            state[key] = state[key][:, idx.to(state[key].device)]
        if u.index_key is not None:
            old = state.get(u.index_key)  # a conv narrowed before keeps its own map into the stream
            state[u.index_key] = old[idx.to(old.device)] if old is not None else idx
    return state


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """FLOPs of one forward of a single image, counted by torch.utils.flop_counter.FlopCounterMode."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """max |a(x) - b(x)| over logits and the pooled feature, both in eval mode."""
    a.eval(), b.eval()
    oa, ob = a(x), b(x)
    return max(float((oa.logits - ob.logits).abs().max()), float((oa.feat - ob.feat).abs().max()))


def export_pruned(
    model: nn.Module, *, input_shape: tuple[int, ...] = (3, 32, 32), check_batch: int = 8, seed: int = 0,
    tolerance: float = 1e-4, where: str = "export",
) -> ExportResult:  # fmt: skip
    """Build the physically smaller network from a model whose pruned filters are zero, check it against the masked
    model (raises if they differ by more than `tolerance` relative to the logits' scale) and count both."""
    spec = model_spec(model)
    if spec is None:
        raise UserError(f"{where}: the model has no constructor spec (it was not built by create_model).")
    units = prunable_units(model, where)
    kept = kept_filters(model, where)
    channels = dict(spec["kwargs"].get("channels") or {})
    for u in units:
        n_kept = int(kept[u.name].sum())
        if n_kept < len(kept[u.name]) or u.name in channels:
            channels[u.name] = n_kept
    kwargs = {k: v for k, v in spec["kwargs"].items() if k != "channels"}
    full_spec: dict[str, Any] = {**spec, "kwargs": {**kwargs, "channels": channels} if channels else kwargs}
    small = create_model_from_spec(full_spec)
    device = next(model.parameters()).device
    small.load_state_dict(_slice_state(model.state_dict(), units, kept))
    small = small.to(device).eval()
    masked = masked_copy(model, kept)
    x = torch.randn(check_batch, *input_shape, generator=torch.Generator().manual_seed(seed)).to(device)
    diff = max_abs_diff(small, masked, x)
    with torch.no_grad():
        scale = max(1.0, float(masked.eval()(x).logits.abs().max()))
    if diff > tolerance * scale:
        raise RuntimeError(f"{where}: the small network differs from the masked model by {diff:.3g} (> {tolerance})")
    was = model.training
    masking = max_abs_diff(masked, model, x)
    model.train(was)
    return ExportResult(
        model=small,
        channels=channels,
        params=(count_params(model), count_params(small)),
        flops=(count_flops(model, input_shape), count_flops(small, input_shape)),
        max_abs_diff=diff,
        masking_diff=masking,
    )
