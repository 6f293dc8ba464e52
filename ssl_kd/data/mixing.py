"""Batch mixing: MixUp, CutMix and RecursiveMix's paste as one mix applied to a dict of tensors.

A mix is drawn once (`sample_mixup`, `sample_cutmix`, `sample_paste_box`) and returned as a `MixParams` (lambda,
permutation, box); `mix_tensors` then applies it to any dict of tensors with the same batch order (images, soft
labels, logits, feature maps, metadata), so everything a method mixes is mixed with the same lambda and partner.
`recursive_mix` is RecursiveMix's paste of the previous batch.

Which tensors get the box: 4-D tensors (N, C, H, W) are spatial (a box mix pastes into them; the box is rescaled
to a map of another size), every other tensor is blended with lambda (labels, logits, metadata). With no box every
tensor is blended.

Randomness comes from torch's global CPU generator (checkpointed by the runner, per process), so a resumed run
mixes exactly as the uninterrupted one would; applying a mix is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_kd.data.transfer import on_device
from ssl_kd.options import Strict

Box = tuple[int, int, int, int]  # (x1, y1, x2, y2) in pixels, clipped to the image; x = width axis


class MixConfig(Strict):
    """A stage's `mix:` block: one batch-level mix per step with probability `prob`.

    mixup: x' = lam x + (1-lam) x[perm], lam ~ Beta(alpha, alpha) (Zhang et al.; Self-KD-Lib alpha 0.4).
    cutmix: a box of area ~ (1-lam) from x[perm] pasted into x, lam corrected to the clipped area (Yun et al.;
    Self-KD-Lib alpha 1.0). Labels (and every other non-spatial tensor) are mixed with the same lam and perm.
    box (cutmix only; ignored otherwise): `cutmix` = CutMix's ``rand_bbox`` (integer centre, integer side, half
    extents rounded down: `cutmix_box`); `dmkd` = DM-KD's box (zhengli97/DM-KD@bbab9ce8 helper/loops.py ``cutmix``:
    continuous centre, edges rounded: `dmkd_box`), which pastes more (at alpha 0.25 on 32 x 32: mean area 0.30 vs
    0.28, no paste 7.7 % vs 13.5 % of batches).
    """

    kind: Literal["none", "mixup", "cutmix"] = "none"
    alpha: float = Field(1.0, gt=0, description="Beta(alpha, alpha) for lambda")
    prob: float = Field(1.0, ge=0, le=1, description="chance that a batch is mixed")
    box: Literal["cutmix", "dmkd"] = "cutmix"  # the CutMix box's rounding (see above)


@dataclass(frozen=True)
class MixParams:
    """One drawn mix. ``perm``: the partner of row i is row perm[i] (None: the partner tensors are given, e.g. a
    history batch). ``box``: paste region in image pixels (None: blend everywhere). ``resize``: paste the partner's
    whole image shrunk into the box (RecursiveMix) instead of its same region (CutMix); ``mode`` is the resize's
    interpolation (bilinear uses align_corners=True, as RecursiveMix)."""

    lam: float
    perm: torch.Tensor | None = None
    box: Box | None = None
    resize: bool = False
    mode: Literal["nearest", "bilinear"] = "nearest"

    @property
    def area(self) -> float:
        """Fraction of the image taken by the partner (1 - lam)."""
        return 1.0 - self.lam

    def to(self, device: torch.device) -> MixParams:
        """The same mix with its permutation on `device` (drawn on the host: see `on_device`)."""
        return self if self.perm is None else replace(self, perm=on_device(self.perm, device))


# ------------------------------------------------------------------------------------------------ sampling
def _lam(alpha: float, fallback: float) -> float:
    if alpha > 0:
        a = torch.tensor(float(alpha))
        return float(torch.distributions.Beta(a, a).sample())
    return fallback


def sample_mixup(batch: int, alpha: float, fallback_lam: float = 1.0) -> MixParams:
    """lam ~ Beta(alpha, alpha) (``fallback_lam`` when alpha <= 0), then perm = randperm(batch)."""
    lam = _lam(alpha, fallback_lam)
    return MixParams(lam, torch.randperm(batch))  # CPU generator even for CUDA batches: one RNG state to checkpoint


def cutmix_box(size: tuple[int, int], cut: float, cy: int, cx: int) -> Box:
    """A box of side ``cut`` x (H, W) centred at (cy, cx), half extents rounded down, clipped to the image (so an odd
    side loses a pixel, as in CutMix's and RecursiveMix's ``rand_bbox``)."""
    h, w = size
    ch, cw = int(h * cut), int(w * cut)
    return max(cx - cw // 2, 0), max(cy - ch // 2, 0), min(cx + cw // 2, w), min(cy + ch // 2, h)


def dmkd_box(size: tuple[int, int], cut: float, cy: float, cx: float) -> Box:
    """DM-KD's box: side ``cut`` x (H, W) (not rounded) around a continuous centre (cy, cx), each edge clipped to
    the image and then rounded to the nearest pixel, halves to even (``np.round``; Python's ``round`` alike)."""
    h, w = size
    bh, bw = h * cut, w * cut
    return (
        round(max(cx - bw / 2, 0.0)),
        round(max(cy - bh / 2, 0.0)),
        round(min(cx + bw / 2, float(w))),
        round(min(cy + bh / 2, float(h))),
    )


def box_lam(box: Box, size: tuple[int, int]) -> float:
    """1 - (clipped box area) / (H W)."""
    x1, y1, x2, y2 = box
    return 1.0 - max(0, x2 - x1) * max(0, y2 - y1) / float(size[0] * size[1])


def sample_cutmix(
    batch: int, alpha: float, size: tuple[int, int], box: Literal["cutmix", "dmkd"] = "cutmix"
) -> MixParams:
    """lam ~ Beta(alpha, alpha), perm, box side sqrt(1 - lam); lam = 1 - the clipped box's area. ``box``: `cutmix`
    (centre uniform over the pixels, `cutmix_box`) or `dmkd` (centre uniform over [0, W) x [0, H), `dmkd_box`)."""
    lam = _lam(alpha, 1.0)
    perm = torch.randperm(batch)
    cut = math.sqrt(1.0 - lam)
    if box == "dmkd":  # the reference draws cx first, then cy (np.random.uniform)
        cx, cy = (float(v) * n for v, n in zip(torch.rand(2, dtype=torch.float64), (size[1], size[0])))
        drawn = dmkd_box(size, cut, cy, cx)
    else:
        cy, cx = int(torch.randint(size[0], (1,))), int(torch.randint(size[1], (1,)))
        drawn = cutmix_box(size, cut, cy, cx)
    return MixParams(box_lam(drawn, size), perm, drawn)


def sample_paste_box(size: tuple[int, int], alpha: float) -> Box:
    """RecursiveMix's box: r ~ U(0, alpha), side sqrt(r) x (H, W), centre uniform over the pixels, clipped."""
    r = float(torch.rand(())) * alpha
    cx, cy = int(torch.randint(size[1], (1,))), int(torch.randint(size[0], (1,)))
    return cutmix_box(size, math.sqrt(r), cy, cx)


def sample_mix(cfg: MixConfig, batch: int, size: tuple[int, int]) -> MixParams | None:
    """The mix a `mix:` block asks for on this batch, or None (kind none, or not drawn with probability prob)."""
    if cfg.kind == "none" or (cfg.prob < 1.0 and float(torch.rand(())) >= cfg.prob):
        return None
    if cfg.kind == "mixup":
        return sample_mixup(batch, cfg.alpha)
    return sample_cutmix(batch, cfg.alpha, size, cfg.box)


# ------------------------------------------------------------------------------------------------ applying
def _scaled(box: Box, image: tuple[int, int], target: tuple[int, int]) -> Box:
    if image == target:
        return box
    sy, sx = target[0] / image[0], target[1] / image[1]
    x1, y1, x2, y2 = box
    return round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)


def mix_tensors(
    tensors: Mapping[str, torch.Tensor],
    mix: MixParams,
    partner: Mapping[str, torch.Tensor] | None = None,
    image_size: tuple[int, int] | None = None,
    spatial: Collection[str] | Callable[[str, torch.Tensor], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Apply one mix to every tensor of a dict (same batch order), returning new tensors (inputs are not modified).

    The partner of ``tensors[k]`` is ``tensors[k][mix.perm]``, or ``partner[k][:B]`` when partner tensors are given
    (e.g. the previous batch). ``spatial`` says which tensors receive the box (default: the 4-D ones); the box is in
    pixels of ``image_size`` (default: the first spatial tensor's H, W) and rescaled for maps of another size.
    Non-spatial tensors (and every tensor when the mix has no box) become lam * t + (1 - lam) * partner; they must
    be floating point (turn class indices into one-hot first).
    """
    is_spatial = _spatial_rule(spatial)
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if partner is not None:
            if key not in partner:
                raise KeyError(f"mix_tensors: no partner tensor for '{key}' (partner has {sorted(partner)})")
            other = partner[key]
            if other.shape[0] < t.shape[0]:
                raise ValueError(
                    f"mix_tensors: partner '{key}' has {other.shape[0]} rows, fewer than the batch's {t.shape[0]}"
                )
            other = other[: t.shape[0]].to(t.dtype)
        else:
            if mix.perm is None:
                raise ValueError("mix_tensors: the mix has no permutation, so give the partner tensors")
            other = t[on_device(mix.perm, t.device)]
        if mix.box is not None and is_spatial(key, t):
            size = image_size or tuple(t.shape[-2:])
            out[key] = _paste(t, other, _scaled(mix.box, size, tuple(t.shape[-2:])), mix)
        else:
            if not t.is_floating_point():
                raise TypeError(f"mix_tensors: '{key}' is {t.dtype}; blend only floating tensors (one-hot labels)")
            out[key] = mix.lam * t + (1.0 - mix.lam) * other
        if image_size is None and mix.box is not None and is_spatial(key, t):
            image_size = tuple(t.shape[-2:])
    return out


def _spatial_rule(spatial) -> Callable[[str, torch.Tensor], bool]:
    if spatial is None:
        return lambda key, t: t.ndim == 4
    if callable(spatial):
        return spatial
    keys = set(spatial)
    return lambda key, t: key in keys


def _paste(t: torch.Tensor, other: torch.Tensor, box: Box, mix: MixParams) -> torch.Tensor:
    x1, y1, x2, y2 = box
    out = t.clone()
    if x2 <= x1 or y2 <= y1:  # empty box (side 0 after rounding down): nothing is pasted
        return out
    if mix.resize:
        align = True if mix.mode == "bilinear" else None
        out[..., y1:y2, x1:x2] = F.interpolate(other, size=(y2 - y1, x2 - x1), mode=mix.mode, align_corners=align)
    else:
        out[..., y1:y2, x1:x2] = other[..., y1:y2, x1:x2]
    return out


def recursive_mix(
    x: torch.Tensor,
    y: torch.Tensor,
    hist_x: torch.Tensor,
    hist_y: torch.Tensor,
    box: Box,
    mode: Literal["nearest", "bilinear"] = "nearest",
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """RecursiveMix (utils.py ``recursive_mix``): the history batch resized into ``box`` and pasted (not blended)
    into a copy of x; lam = 1 - box area / (H W); y_mixed = lam y + (1 - lam) hist_y (both soft, (B, C)).

    ``box`` = (x1, y1, x2, y2) is already clipped; hist_x / hist_y may hold more rows than x (the first B are used).
    An empty box pastes nothing and gives lam = 1."""
    size = (x.shape[-2], x.shape[-1])
    lam = box_lam(box, size)
    mix = MixParams(lam, box=box, resize=True, mode=mode)
    out = mix_tensors({"x": x, "y": y}, mix, partner={"x": hist_x, "y": hist_y}, image_size=size, spatial=("x",))
    return out["x"], out["y"], lam


# ------------------------------------------------------------------------------ the supervised stage's legacy keys
def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Class indices -> one-hot rows; soft (2-D) targets pass through in ``dtype``."""
    if y.ndim == 2:
        return y.to(dtype)
    return F.one_hot(y.long(), num_classes).to(dtype)
