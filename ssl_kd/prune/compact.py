"""Export a filter-pruned model as the physically smaller network: pruned filters removed, their BN channels sliced,
the input channels of the conv that read them cut (models/pruned.py describes the shape).

A filter counts as pruned when its weights are all zero: a prune stage ends that way when its last mask step
zeroes every pruned filter (`prune.final_zero`, or a `decay_off_from` window reaching the last epoch). A removed
channel whose BN was not zeroed with it still outputs a constant, BN(0): the export keeps that exactly (added into
the residual stream, or folded into the next conv), so the small network computes what the trained one did. The
check runs both on random inputs in eval mode; FLOPs are counted by torch.utils.flop_counter.FlopCounterMode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    max_abs_diff: float  # small vs trained model (logits and pooled feature), on random inputs

    def describe(self, name: str = "model") -> str:
        (p0, p1), (f0, f1) = self.params, self.flops
        return "\n".join(
            [
                f"{name}: {len(self.channels)} conv(s) narrowed",
                f"  params {p0:,} -> {p1:,} ({100 * p1 / p0:.1f}% kept)",
                f"  FLOPs  {f0:,} -> {f1:,} per image ({100 * f1 / f0:.1f}% kept, FlopCounterMode)",
                f"  max |small - masked| = {self.max_abs_diff:.3g} on random inputs",
            ]
        )


def _pruned_filters(conv: nn.Conv2d) -> Tensor:
    """True for each filter that is entirely zero (weight, bias and, for an exported conv, its folded inputs)."""
    zero = conv.weight.detach().flatten(1).eq(0).all(dim=1)
    if conv.bias is not None:
        zero &= conv.bias.detach().eq(0)
    if getattr(conv, "fold", None) is not None:
        zero &= conv.fold.detach().flatten(1).eq(0).all(dim=1)
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


@torch.no_grad()
def _constants(model: nn.Module, unit: Unit) -> Tensor:
    """What each output channel of `unit` becomes when its filter is zero, as its reader sees it: the eval-mode
    BN of 0 (then the activation, for an inner conv), 0 without a BN."""
    conv = model.get_submodule(unit.name)
    if unit.bn is None:
        return torch.zeros(conv.out_channels)
    bn = model.get_submodule(unit.bn)
    zero = torch.zeros(1, conv.out_channels, 1, 1, device=bn.weight.device, dtype=bn.weight.dtype)
    out = F.batch_norm(zero, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    if unit.act == "relu":
        out = torch.relu(out)
    elif unit.act is not None:
        out = model.get_submodule(unit.act)(out)
    return out.flatten().cpu()


def _slice_state(model: nn.Module, units: list[Unit], kept: dict[str, Tensor]) -> dict[str, Tensor]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # first, on the full tensors: what the removed channels feed their readers
    for u in units:
        k = kept[u.name]
        if bool(k.all()):
            continue
        gone = (~k).nonzero().flatten()
        const = _constants(model, u)[gone]
        if u.consumer is not None:  # inner: fold into the reading conv as conv(ones, sum_c W[:, c] * const_c)
            w = state[f"{u.consumer}.weight"]
            fold = (w[:, gone] * const.view(1, -1, 1, 1).to(w.dtype)).sum(dim=1, keepdim=True)
            old = state.get(f"{u.consumer}.fold")
            state[f"{u.consumer}.fold"] = fold if old is None else old + fold
        if u.const_key is not None:  # stream writer: the constant of each removed stream channel
            index = state.get(u.index_key)  # narrowed before: its filters' stream channels, and their constants
            if index is None:
                index, values = torch.arange(len(k)), torch.zeros(len(k))
            else:
                values = state[u.const_key].clone()
            values[index[gone]] = const.to(values.dtype)
            state[u.const_key] = values
    # then slice
    for u in units:
        k = kept[u.name]
        if bool(k.all()):
            continue
        idx = k.nonzero().flatten()
        for suffix in ("weight", "bias", "fold"):
            key = f"{u.name}.{suffix}"
            if key in state:
                state[key] = state[key][idx]
        if u.bn is not None:
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                key = f"{u.bn}.{suffix}"
                state[key] = state[key][idx]
        if u.consumer is not None:
            key = f"{u.consumer}.weight"
            state[key] = state[key][:, idx]
        if u.index_key is not None:
            old = state.get(u.index_key)  # a conv narrowed before keeps its own map into the stream
            state[u.index_key] = old[idx] if old is not None else idx
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
    """Build the physically smaller network from a model whose pruned filters are zero, check it against the model
    (raises if they differ by more than `tolerance` relative to the logits' scale) and count both."""
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
    small = create_model_from_spec({**spec, "kwargs": {**kwargs, "channels": channels} if channels else kwargs})
    small.load_state_dict(_slice_state(model, units, kept))
    device = next(model.parameters()).device
    small = small.to(device).eval()
    x = torch.randn(check_batch, *input_shape, generator=torch.Generator().manual_seed(seed)).to(device)
    was = model.training
    diff = max_abs_diff(small, model, x)
    with torch.no_grad():
        scale = max(1.0, float(model(x).logits.abs().max()))
    model.train(was)
    if diff > tolerance * scale:
        raise RuntimeError(f"{where}: the small network differs from the masked model by {diff:.3g} (> {tolerance})")
    return ExportResult(
        model=small,
        channels=channels,
        params=(count_params(model), count_params(small)),
        flops=(count_flops(model, input_shape), count_flops(small, input_shape)),
        max_abs_diff=diff,
    )
