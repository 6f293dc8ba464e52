"""The fused RandAugment slot (device_augment.py: three op families, a fixed kernel sequence) against an independent
transcription of the per-op implementation it replaced (ssl_kd@54cd557 ssl_kd/data/device_augment.py: every color
op on every image, selected per image by torch.where), bit for bit on the same draws; that the strong transform
makes no host sync (a trap on the calls that synchronise a GPU); and that the number of aten ops per batch is fixed
and does not depend on which ops the draws pick."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import real_data_root
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ssl_kd.data import device_augment as D
from ssl_kd.data.config import StrongAugConfig, WeakAugConfig

# ------------------------------------------------------------------ the replaced implementation, transcribed
OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Rotate", "Sharpness",
       "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")  # fmt: skip
AFFINE = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _per_sample(v, x):
    return v.to(x.dtype).view(-1, 1, 1, 1)


def _blend(degenerate, x, factor):
    f = _per_sample(factor.float(), x)
    return torch.trunc(degenerate + f * (x - degenerate))


def gray(x):
    r, g, b = x.to(torch.int64).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1).to(x.dtype)


def brightness(x, v):
    return _blend(torch.zeros_like(x), x, v)


def color(x, v):
    return _blend(gray(x).expand_as(x), x, v)


def contrast(x, v):
    g = gray(x).double().sum(dim=(1, 2, 3))
    mean = torch.floor(g / torch.full_like(g, x.shape[-2] * x.shape[-1]) + 0.5).to(x.dtype)
    return _blend(mean.view(-1, 1, 1, 1).expand_as(x), x, v)


def sharpness(x, v):
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    s = sum(p[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) + 4 * x
    smooth = torch.floor((2 * s + 13) / 26)
    smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]
    smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
    return _blend(smooth, x, v)


def posterize(x, v):
    bits = torch.clamp(torch.trunc(v), min=1, max=8).to(torch.int64)
    mask = torch.bitwise_left_shift(torch.full_like(bits, 0xFF), 8 - bits) & 0xFF
    return (x.to(torch.int64) & mask.view(-1, 1, 1, 1)).to(x.dtype)


def solarize(x, v):
    return torch.where(x < _per_sample(v, x), x, 255 - x)


def auto_contrast(x, v=None):
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    span = x.amax(dim=(2, 3), keepdim=True).double() - lo
    live = span > 0
    scale = torch.where(live, torch.full_like(span, 255.0) / torch.where(live, span, torch.ones_like(span)), 1.0)
    offset = torch.where(live, -lo * scale, torch.zeros_like(span))
    return torch.trunc((x.double() * scale + offset).clamp(0, 255)).to(x.dtype)


def equalize(x, v=None):
    b, c, h, w = x.shape
    xi = x.to(torch.int64).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device).scatter_add_(1, xi, torch.ones_like(xi))
    top_bin = 255 - torch.argmax((hist.flip(1) > 0).to(torch.int8), dim=1)
    top = hist.gather(1, top_bin[:, None])[:, 0]
    step = (h * w - top) // 255
    safe = step.clamp_min(1)[:, None]
    below = torch.cumsum(hist, dim=1) - hist
    ramp = torch.arange(256, device=x.device).expand(b * c, 256)
    lut = torch.where(step[:, None] > 0, torch.clamp((safe // 2 + below) // safe, max=255), ramp)
    return lut.gather(1, xi).view(b, c, h, w).to(x.dtype)


def affine_matrices(op, v, h, w):
    v = v.double()
    n = v.shape[0]
    m = torch.zeros(n, 2, 3, dtype=torch.float64, device=v.device)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    is_ = {name: op == OPS.index(name) for name in AFFINE}
    t = -v * (math.pi / 180.0)
    cs, sn = torch.cos(t), torch.sin(t)
    cx, cy = w / 2.0, h / 2.0
    rot = torch.stack([cs, sn, cs * -cx + sn * -cy + cx, -sn, cs, -sn * -cx + cs * -cy + cy], 1).view(n, 2, 3)
    m = torch.where(is_["Rotate"].view(-1, 1, 1), rot, m)
    m[:, 0, 1] = torch.where(is_["ShearX"], v, m[:, 0, 1])
    m[:, 1, 0] = torch.where(is_["ShearY"], v, m[:, 1, 0])
    m[:, 0, 2] = torch.where(is_["TranslateX"], v * w, m[:, 0, 2])
    m[:, 1, 2] = torch.where(is_["TranslateY"], v * h, m[:, 1, 2])
    return m


def warp_affine(x, m, fill=0.0):
    b, c, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=torch.float64) + 0.5,
        torch.arange(w, device=x.device, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    m = m.view(b, 6, 1, 1)
    sx = torch.floor(m[:, 0] * xs + m[:, 1] * ys + m[:, 2]).long()
    sy = torch.floor(m[:, 3] * xs + m[:, 4] * ys + m[:, 5]).long()
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    flat = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
    return torch.where(inside.unsqueeze(1), out, torch.full_like(out, fill))


COLOR_OPS = {
    "AutoContrast": auto_contrast, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Equalize": equalize, "Posterize": posterize, "Sharpness": sharpness, "Solarize": solarize,
}  # fmt: skip


def old_slot(x, op, v, apply):
    out = warp_affine(x, affine_matrices(torch.where(apply, op, -1), v, *x.shape[-2:]))
    for name, fn in COLOR_OPS.items():
        sel = (apply & (op == OPS.index(name))).view(-1, 1, 1, 1)
        out = torch.where(sel, fn(x, v), out)
    return out


def cutout(x, side, cx, cy, fill):
    b, c, h, w = x.shape
    side, cx, cy = side.double(), cx.double(), cy.double()
    x0 = torch.trunc(torch.clamp(cx - side / 2.0, min=0.0))
    y0 = torch.trunc(torch.clamp(cy - side / 2.0, min=0.0))
    x1 = torch.trunc(torch.clamp(x0 + side, max=float(w)))
    y1 = torch.trunc(torch.clamp(y0 + side, max=float(h)))
    cols = torch.arange(w, device=x.device, dtype=torch.float64).view(1, 1, w)
    rows = torch.arange(h, device=x.device, dtype=torch.float64).view(1, h, 1)
    box = (
        (cols >= x0.view(-1, 1, 1)) & (cols <= x1.view(-1, 1, 1)) & (rows >= y0.view(-1, 1, 1))
        & (rows <= y1.view(-1, 1, 1)) & (side > 0).view(-1, 1, 1)
    )  # fmt: skip
    return torch.where(box.unsqueeze(1), fill.to(x.dtype).view(1, c, 1, 1), x)


def flip_pad_crop(x, flip, top, left, pad, reflect):
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) + top.view(-1, 1, 1) - pad
    cols = torch.arange(w, device=x.device).view(1, 1, w) + left.view(-1, 1, 1) - pad
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    if reflect:
        rows = torch.where(rows < 0, -rows, torch.where(rows >= h, 2 * (h - 1) - rows, rows))
        cols = torch.where(cols < 0, -cols, torch.where(cols >= w, 2 * (w - 1) - cols, cols))
        inside = torch.ones_like(inside)
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    cols = torch.where(flip.view(-1, 1, 1), w - 1 - cols, cols)
    flat = (rows * w + cols).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
    return torch.where(inside.unsqueeze(1), out, torch.zeros_like(out))


class OldGeometry:
    """The replaced normalisation (host constants copied per call) and flip + pad + crop (per-axis index arithmetic)."""

    def normalize(self, x):
        scale = torch.as_tensor(self._scale, device=x.device).view(1, 3, 1, 1)
        bias = torch.as_tensor(self._bias, device=x.device).view(1, 3, 1, 1)
        out = x.float() * scale + bias
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def geometric(self, x, u):
        p = self.weak.crop_padding
        flip = (u[:, 0] < 0.5) & self.weak.flip
        top = torch.trunc(u[:, 1] * (2 * p + 1)).long()
        left = torch.trunc(u[:, 2] * (2 * p + 1)).long()
        if p == 0 and not self.weak.flip:
            return x
        return flip_pad_crop(x, flip, top, left, p, self.weak.pad_mode == "reflect")


class OldWeak(OldGeometry, D.DeviceWeak):
    """DeviceWeak as it was."""


class OldStrong(OldGeometry, D.DeviceStrong):
    """DeviceStrong as it was: per-op RandAugment, per-axis geometry and cutout, host constants copied per call."""

    def randaugment(self, x, u):
        s = self.strong
        lo = torch.tensor([D.RANGES[n][0] for n in OPS], dtype=torch.float64)
        span = torch.tensor([D.RANGES[n][1] for n in OPS], dtype=torch.float64) - lo
        lo, span = lo.to(x.device), span.to(x.device)
        for i in range(s.num_ops):
            pick, keep, mag = u[:, 3 * i], u[:, 3 * i + 1], u[:, 3 * i + 2]
            op = torch.trunc(pick * len(OPS)).long()
            x = old_slot(x, op, lo[op] + span[op] * mag, keep < s.op_prob)
        c = u[:, -3:]
        h, w = x.shape[-2:]
        side = (c[:, 0] * s.cutout if s.cutout_random_size else torch.full_like(c[:, 0], s.cutout)) * w
        fill = torch.tensor(s.cutout_fill, device=x.device)
        return cutout(x, side, c[:, 1] * w, c[:, 2] * h, fill)


# ------------------------------------------------------------------ inputs
def adversarial_images(size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    """(14, 3, H, W) float images where the point ops' edge cases live: constant images (all channels, per channel,
    all 0, all 255), one constant channel, two levels (far apart, adjacent, 0 and 255), all pixels but a few in the top
    level (Equalize's step 0), every level once (a ramp), noise, and blocky narrow-range images."""
    h, w = size
    rng = np.random.default_rng(seed)
    out = np.empty((14, h, w, 3), np.int64)
    out[0] = 77
    out[1] = rng.integers(0, 256, 3)
    out[2], out[3] = 0, 255
    out[4] = rng.integers(0, 256, (h, w, 3))
    out[4, ..., 1] = 200  # one single-level channel
    for i, (a, b) in zip((5, 6, 7), ((30, 220), (128, 129), (0, 255))):
        out[i] = np.where(rng.random((h, w, 3)) < 0.3, a, b)
    out[8] = 255
    out[8].reshape(-1, 3)[: min(3, h * w)] = (0, 17, 254)  # all but a few pixels in the top level
    out[9] = (np.arange(h * w).reshape(h, w, 1) * 7 + np.arange(3)) % 256  # many levels, once each
    out[10] = rng.integers(0, 256, (h, w, 3))
    out[11] = rng.integers(100, 104, (h, w, 3))
    for i in (12, 13):
        base = rng.integers(40, 200, (4, 4, 3))
        out[i] = base[np.arange(h) * 4 // h][:, np.arange(w) * 4 // w]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().contiguous()


@functools.lru_cache(maxsize=1)
def real_images(n: int = 128) -> torch.Tensor | None:
    """The first n CIFAR-10 test images (uint8 NCHW), read once (the test split decompresses 5x faster)."""
    root = real_data_root("cifar10.npz")
    if root is None:
        return None
    with np.load(root / "cifar10.npz") as f:
        return torch.from_numpy(f["x_test"][:n]).permute(0, 3, 1, 2).contiguous()


def magnitudes(name: str, n: int, rng: np.random.Generator) -> torch.Tensor:
    """n magnitudes of op `name`: the range ends (and the top draw below 1), then uniform."""
    lo, hi = D.RANGES[name]
    v = lo + (hi - lo) * rng.random(n)
    v[:3] = lo, hi, lo + (hi - lo) * np.nextafter(1.0, 0.0)
    return torch.from_numpy(v)


# ------------------------------------------------------------------ bit-exact against the replaced implementation
@pytest.mark.parametrize("size", [(32, 32), (7, 9), (2, 3)])
def test_each_op_equals_the_per_op_slot_on_adversarial_images(size):
    """Every op forced on every adversarial image, magnitudes at the range ends and between, applied or not."""
    x = adversarial_images(size).repeat(2, 1, 1, 1)
    n = len(x)
    rng = np.random.default_rng(1)
    for k, name in enumerate(OPS):
        op = torch.full((n,), k)
        v = magnitudes(name, n, rng)
        for apply in (torch.ones(n, dtype=torch.bool), torch.from_numpy(rng.random(n) < 0.5)):
            ref, out = old_slot(x, op, v, apply), D.randaugment_slot(x, op, v, apply)
            assert torch.equal(out, ref), f"{name} {size}: {(out != ref).flatten(1).any(1).sum()} images differ"


def test_mixed_ops_equal_the_per_op_slot():
    """Ops drawn per sample within one batch (each family beside the others), none applied, all applied."""
    x = adversarial_images().repeat(8, 1, 1, 1)
    n = len(x)
    rng = np.random.default_rng(2)
    op = torch.from_numpy(rng.integers(0, len(OPS), n))
    lo = torch.tensor([D.RANGES[o][0] for o in OPS], dtype=torch.float64)
    hi = torch.tensor([D.RANGES[o][1] for o in OPS], dtype=torch.float64)
    v = lo[op] + (hi - lo)[op] * torch.from_numpy(rng.random(n))
    for apply in (torch.from_numpy(rng.random(n) < 0.5), torch.zeros(n, dtype=torch.bool)):
        assert torch.equal(D.randaugment_slot(x, op, v, apply), old_slot(x, op, v, apply))
    assert torch.equal(D.randaugment_slot(x, op, v, torch.zeros(n, dtype=torch.bool)), x)


VARIANTS = {
    "torchssl": ({}, {"order": "before"}),
    "usb": ({}, {}),
    "fullmatch": ({"pad_mode": "constant"},
                  {"num_ops": 2, "op_prob": 0.5, "cutout_random_size": False, "cutout_fill": [127, 127, 127]}),
    "one_op_no_cutout": ({"flip": False, "crop_padding": 0}, {"num_ops": 1, "cutout": 0.0}),
    "never_applied": ({}, {"num_ops": 2, "op_prob": 0.0}),
    "no_ops": ({}, {"num_ops": 0}),
}  # fmt: skip


def strong_pair(variant: str) -> tuple[D.DeviceStrong, OldStrong]:
    weak, strong = VARIANTS[variant]
    args = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26), WeakAugConfig(**weak), StrongAugConfig(**strong))
    return D.DeviceStrong(*args), OldStrong(*args)


def forced_draws(n: int, num_ops: int, rng: np.random.Generator, ends: bool) -> np.ndarray:
    """Draws that pick every op in every slot (sample i, slot j: op (i + 5 j) mod 14), applied or not at random,
    magnitudes at the ends of [0, 1) (ends) or uniform."""
    u = rng.random((n, 3 + 3 * num_ops + 3))
    for j in range(num_ops):
        u[:, 3 + 3 * j] = ((np.arange(n) + 5 * j) % len(OPS) + 0.5) / len(OPS)
        if ends:
            u[:, 5 + 3 * j] = np.where(rng.random(n) < 0.5, 0.0, np.nextafter(1.0, 0.0))
    return u


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_strong_transform_equals_the_per_op_one_on_adversarial_images(variant):
    new, old = strong_pair(variant)
    x = adversarial_images().to(torch.uint8).repeat(4, 1, 1, 1)
    rng = np.random.default_rng(3)
    for ends in (False, True):
        u = torch.from_numpy(forced_draws(len(x), new.strong.num_ops, rng, ends))
        assert torch.equal(new(x, u), old(x, u)), variant


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_strong_transform_equals_the_per_op_one_on_real_cifar(variant):
    x = real_images()
    if x is None:
        pytest.skip("real CIFAR-10 (cifar10.npz) is in neither $SSL_KD_DATA nor the shared data folder")
    new, old = strong_pair(variant)
    rng = np.random.default_rng(4)
    for u in (rng.random((len(x), new.num_draws)), forced_draws(len(x), new.strong.num_ops, rng, False)):
        u = torch.from_numpy(u)
        assert torch.equal(new(x, u), old(x, u)), variant


@pytest.mark.parametrize(
    "weak", [{}, {"pad_mode": "constant"}, {"flip": False}, {"crop_padding": 0}, {"crop_padding": 7}]
)
def test_weak_transform_equals_the_replaced_one(weak):
    args = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26), WeakAugConfig(**weak))
    x = adversarial_images((9, 12)).to(torch.uint8).repeat(4, 1, 1, 1)
    u = np.random.default_rng(7).random((len(x), 3))
    u[:3, 1:] = [[0.0, 0.0], [np.nextafter(1.0, 0.0)] * 2, [0.5, 0.0]]  # the crop offsets at their ends
    u = torch.from_numpy(u)
    assert torch.equal(D.DeviceWeak(*args)(x, u), OldWeak(*args)(x, u))


# ------------------------------------------------------------------ capturable: no host sync, no host data
class SyncTrap(TorchFunctionMode):
    """Fails on the calls that make the host wait for a GPU or that have a data-dependent shape (neither can run
    inside a CUDA graph), and on tensors made from host data inside the transform (a host-to-device copy per call)."""

    BANNED = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__complex__", "nonzero", "argwhere",
              "masked_select", "unique", "unique_consecutive", "bincount", "cpu", "numpy", "tensor", "as_tensor",
              "from_numpy", "repeat_interleave"}  # fmt: skip

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in self.BANNED:
            raise AssertionError(f"host sync or host data: {name}")
        if name == "where" and len(args) + len(kwargs) == 1:
            raise AssertionError("one-argument torch.where (nonzero)")
        if name in ("__getitem__", "__setitem__", "index_put", "index_put_") and len(args) > 1:
            index = args[1] if isinstance(args[1], (tuple, list)) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                raise AssertionError(f"boolean-mask indexing: {name}")
        return func(*args, **kwargs)


def test_the_trap_catches_syncs():
    x = torch.arange(4.0)
    for call in (lambda: x.sum().item(), lambda: bool(x[0]), lambda: x[x > 1], lambda: torch.where(x > 1),
                 lambda: x.nonzero(), lambda: torch.tensor([1.0]), lambda: x.tolist()):  # fmt: skip
        with SyncTrap(), pytest.raises(AssertionError, match="host|boolean|torch.where"):
            call()


@pytest.mark.parametrize("variant", ["torchssl", "fullmatch"])
def test_the_strong_transform_makes_no_host_sync(variant):
    """The whole `DeviceTransform.__call__` (geometry, RandAugment, cutout, normalize; and the weak one). Its
    constants are copied to the device once, on the first call (as the CUDA-graph capture's warm-up does); every
    later call is trapped."""
    new, _ = strong_pair(variant)
    x = adversarial_images().to(torch.uint8).repeat(2, 1, 1, 1)
    u = torch.from_numpy(forced_draws(len(x), new.strong.num_ops, np.random.default_rng(5), False))
    weak = D.DeviceWeak(new.mean, new.std, new.weak)
    first, first_weak = new(x, u), weak(x, u[:, :3])
    with SyncTrap():
        again, again_weak = new(x, u), weak(x, u[:, :3])
    assert torch.equal(first, again) and torch.equal(first_weak, again_weak)


# ------------------------------------------------------------------ a fixed number of aten ops per batch
def _is_view(func) -> bool:
    ret = func._schema.returns
    return bool(ret) and ret[0].alias_info is not None and not ret[0].alias_info.is_write


class OpLog(TorchDispatchMode):
    """The aten ops a call launches, views (no kernel) left out."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not _is_view(func):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def ops_per_batch(t, x: torch.Tensor, u: torch.Tensor) -> list[str]:
    t(x, u)  # constants copied once
    with OpLog() as log:
        t(x, u)
    return log.ops


# A strong TorchSSL batch (flip + crop, 3 RandAugment ops, cutout, normalize) launches 334 aten ops (views left out;
# 478 with them; FullMatch's 2 ops: 249), 90 per RandAugment slot, whatever the draws. The implementation this
# replaced (ssl_kd@54cd557, OldStrong above: each of the 8 color ops run on every image and selected by torch.where)
# launched 750 (1,076 with views; FullMatch: 513), 216 per slot.
OPS_BOUND = 340


@pytest.mark.parametrize("variant", ["torchssl", "fullmatch"])
def test_ops_per_batch_are_few_and_do_not_depend_on_the_draws(variant):
    new, old = strong_pair(variant)
    x = adversarial_images().to(torch.uint8).repeat(2, 1, 1, 1)
    n, k = len(x), new.strong.num_ops
    rng = np.random.default_rng(6)
    every_kind = torch.from_numpy(forced_draws(n, k, rng, False))
    one_kind = every_kind.clone()
    one_kind[:, 3 : 3 + 3 * k : 3] = (OPS.index("Identity") + 0.5) / len(OPS)
    affine_only = every_kind.clone()
    affine_only[:, 3 : 3 + 3 * k : 3] = (OPS.index("Rotate") + 0.5) / len(OPS)
    logs = [ops_per_batch(new, x, u) for u in (every_kind, one_kind, affine_only)]
    assert logs[0] == logs[1] == logs[2]  # the same op sequence, whatever the draws pick
    reference = ops_per_batch(old, x, every_kind)
    assert len(logs[0]) <= OPS_BOUND < len(reference), (len(logs[0]), len(reference))


# ------------------------------------------------------------------ the CUDA-graph option stays off the CPU
def test_device_graph_option_is_parsed_and_never_used_off_cuda():
    from ssl_kd.data import DataConfig, DeviceImages, DeviceViewDataset, ImageSet

    assert DataConfig().device_graph == "auto"
    assert DataConfig(device_graph=False).device_graph is False and DataConfig(device_graph=True).device_graph is True
    with pytest.raises(ValueError, match="device_graph"):
        DataConfig(device_graph="sometimes")
    x = adversarial_images().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = DeviceImages(ImageSet(x, np.arange(len(x)) % 3), torch.device("cpu"))
    new, _ = strong_pair("usb")
    pos, seeds = np.arange(6), np.arange(6, dtype=np.uint64) + 7
    batches = []
    for graph in ("auto", True, False):
        ds = DeviceViewDataset(images, {"s": new}, graph=graph)
        assert ds.graph is False  # a CPU device: always eager
        batches.append(ds.batch(pos, seeds)["s"])
        assert not ds._graphs
    assert torch.equal(batches[0], batches[1]) and torch.equal(batches[0], batches[2])


def test_a_failed_capture_falls_back_to_eager_with_one_note(caplog):
    """Forced on where capturing cannot work (a CPU device), the dataset logs one note and stays eager for good."""
    from ssl_kd.data import DeviceImages, DeviceViewDataset, ImageSet

    x = adversarial_images().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = DeviceImages(ImageSet(x, np.arange(len(x)) % 3), torch.device("cpu"))
    new, _ = strong_pair("fullmatch")
    ds = DeviceViewDataset(images, {"s": new}, graph=False)
    pos, seeds = np.arange(6), np.arange(6, dtype=np.uint64) + 7
    eager = ds.batch(pos, seeds)["s"]
    ds.graph = True  # as on CUDA
    with caplog.at_level("WARNING", logger="ssl_kd.data"):
        first, second = ds.batch(pos, seeds)["s"], ds.batch(pos, seeds)["s"]
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert ds.graph is False and ds._graphs == {6: None}
    notes = [r for r in caplog.records if "device_graph" in r.getMessage()]
    assert len(notes) == 1 and "eagerly" in notes[0].getMessage()
