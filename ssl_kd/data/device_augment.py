"""Weak and strong augmentation of a whole batch at once, on the device that holds the images (a GPU in training,
the CPU in tests): the device-resident data path of the FixMatch family (`data.pipeline: device`).

The peers spend days per FixMatch run because 960 PIL RandAugment calls per step run in DataLoader workers
(FixMatch-pytorch and USB users report 4 to 10 days on one GPU: LeeDoYup/FixMatch-pytorch #3,
microsoft/Semi-supervised-learning #30). Here each op is a few tensor kernels over the batch, with per-sample
random parameters, and no host work per image. Every op follows the PIL semantics of the CPU path (augment.py) on
the same parameters:

- exact (integer arithmetic, as PIL): AutoContrast, Equalize, Identity, Posterize, Solarize, Cutout, flip, pad+crop;
  Sharpness (its 3x3 smoothing is computed exactly as an integer sum / 13, which PIL and cv2 approximate in float);
- Brightness, Color, Contrast: the same float32 blend and truncation as PIL; a GPU may contract `d + f (x - d)` into
  one fused multiply-add, so a value can land one gray level lower on exact ties;
- Rotate, ShearX/Y, TranslateX/Y: PIL's nearest-neighbour inverse map in float64 (the CPU path uses cv2's
  fixed-point remap, which differs from PIL on exact ties of the sampling grid).
`benchmarks/augment_fidelity.py` measures each op against the CPU op and PIL on real CIFAR images.

Randomness: the draws of sample b are `uniform(mix_seed(seed_b, j))` for j = 0, 1, ... (a counter-based hash of
the sample's stream seed, computed on the host with NumPy in a few microseconds per batch): first the geometry
(flip, top, left), then per RandAugment op (which op, apply?, magnitude), then the cutout size and centre. A sample's
augmentation is therefore a function of (seed, position in the stream), whatever the batch composition, process
count or device: resume is exact. It is a different random stream from the CPU path's PCG64 draws (same
distributions), so the two paths see different augmentations of the same sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ssl_kd.data.augment import StrongTransform, Transform, WeakTransform
from ssl_kd.data.config import StrongAugConfig, WeakAugConfig
from ssl_kd.data.hashing import mix_seeds

Tensor = torch.Tensor

# op ids in RANDAUGMENT_OPS order (augment.py): the same table, so an op id means the same op on both paths
OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Rotate", "Sharpness",
       "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")  # fmt: skip
RANGES = {
    "AutoContrast": (0.0, 1.0), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95), "Contrast": (0.05, 0.95),
    "Equalize": (0.0, 1.0), "Identity": (0.0, 1.0), "Posterize": (4.0, 8.0), "Rotate": (-30.0, 30.0),
    "Sharpness": (0.05, 0.95), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0.0, 256.0),
    "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3),
}  # fmt: skip
AFFINE = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
_LUMA = (19595, 38470, 7471)


def uniforms(seeds: np.ndarray, n: int) -> np.ndarray:
    """(B, n) uniform draws in [0, 1): draw j of sample b is a hash of (seed_b, j), as float64 with 53 bits."""
    j = np.arange(n, dtype=np.uint64)[None, :]
    h = mix_seeds(np.asarray(seeds)[:, None], j)
    return (h >> np.uint64(10)).astype(np.float64) * 2.0**-53


# ---------------------------------------------------------------- batched ops on (B, 3, H, W) integer-valued float
def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.dtype).view(-1, 1, 1, 1)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL Image.blend for 0 <= factor <= 1: trunc(d + f (x - d)) in float32."""
    f = _per_sample(factor.float(), x)
    return torch.trunc(degenerate + f * (x - degenerate))


def gray(x: Tensor) -> Tensor:
    """PIL convert('L') on integer-valued RGB: (19595 R + 38470 G + 7471 B + 2^15) >> 16, shape (B, 1, H, W)."""
    r, g, b = x.to(torch.int64).unbind(1)
    return ((r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2] + 0x8000) >> 16).unsqueeze(1).to(x.dtype)


def brightness(x: Tensor, v: Tensor) -> Tensor:
    return _blend(torch.zeros_like(x), x, v)


def color(x: Tensor, v: Tensor) -> Tensor:
    return _blend(gray(x).expand_as(x), x, v)


def contrast(x: Tensor, v: Tensor) -> Tensor:
    """Blend with a flat image at the mean gray level rounded half up (PIL's int(mean + 0.5))."""
    g = gray(x).double().sum(dim=(1, 2, 3))
    mean = torch.floor(g / torch.full_like(g, x.shape[-2] * x.shape[-1]) + 0.5).to(x.dtype)  # IEEE division
    return _blend(mean.view(-1, 1, 1, 1).expand_as(x), x, v)


def sharpness(x: Tensor, v: Tensor) -> Tensor:
    """Blend with PIL's SMOOTH filter (3x3 ones, centre 5, / 13, rounded; the 1-px border keeps the original)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    s = sum(p[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) + 4 * x  # integers <= 3315: exact
    smooth = torch.floor((2 * s + 13) / 26)  # round(s / 13): (2s + 13) / 26 is never within 1/26 of an integer
    smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]
    smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
    return _blend(smooth, x, v)


def posterize(x: Tensor, v: Tensor) -> Tensor:
    """Keep the top max(1, int(v)) bits (v >= 8 leaves the image unchanged)."""
    bits = torch.clamp(torch.trunc(v), min=1, max=8).to(torch.int64)
    mask = torch.bitwise_left_shift(torch.full_like(bits, 0xFF), 8 - bits) & 0xFF
    return (x.to(torch.int64) & mask.view(-1, 1, 1, 1)).to(x.dtype)


def solarize(x: Tensor, v: Tensor) -> Tensor:
    return torch.where(x < _per_sample(v, x), x, 255 - x)


def auto_contrast(x: Tensor, v: Tensor | None = None) -> Tensor:
    """Per channel, stretch [min, max] to [0, 255] by trunc(p * 255 / span - lo * 255 / span) in float64."""
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    span = x.amax(dim=(2, 3), keepdim=True).double() - lo
    live = span > 0
    # an IEEE division, as NumPy's (torch computes `scalar / tensor` as a reciprocal times the scalar)
    scale = torch.where(live, torch.full_like(span, 255.0) / torch.where(live, span, torch.ones_like(span)), 1.0)
    offset = torch.where(live, -lo * scale, torch.zeros_like(span))
    return torch.trunc((x.double() * scale + offset).clamp(0, 255)).to(x.dtype)


def equalize(x: Tensor, v: Tensor | None = None) -> Tensor:
    """PIL ImageOps.equalize per channel: step = (N - #top bin) // 255, lut[i] = (step // 2 + #below i) // step."""
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


def affine_matrices(op: Tensor, v: Tensor, h: int, w: int) -> Tensor:
    """(B, 2, 3) float64 inverse maps (PIL's Image.transform data) of the affine ops; identity for other ops."""
    v = v.double()
    n = v.shape[0]
    m = torch.zeros(n, 2, 3, dtype=torch.float64, device=v.device)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    is_ = {name: op == OPS.index(name) for name in AFFINE}
    # Rotate: PIL rotates counter-clockwise about the centre by v degrees
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


def warp_affine(x: Tensor, m: Tensor, fill: float = 0.0) -> Tensor:
    """PIL Image.transform(AFFINE, NEAREST): output pixel centre (x + .5, y + .5) reads input floor(m @ centre);
    outside the image -> fill. One gather for the whole batch."""
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


def apply_op(x: Tensor, name: str, v: Tensor) -> Tensor:
    """One named op on every image of the batch (magnitude v per image): for tests and the fidelity benchmark."""
    if name == "Identity":
        return x
    if name in AFFINE:
        op = torch.full_like(v, OPS.index(name), dtype=torch.int64)
        return warp_affine(x, affine_matrices(op, v, *x.shape[-2:]))
    return COLOR_OPS[name](x, v)


def randaugment_slot(x: Tensor, op: Tensor, v: Tensor, apply: Tensor) -> Tensor:
    """One RandAugment op per image (op ids, magnitudes, apply flags per image), without a host sync: the affine
    ops share one warp (identity for the other images), each color op runs on the batch and is selected per image."""
    out = warp_affine(x, affine_matrices(torch.where(apply, op, -1), v, *x.shape[-2:]))
    for name, fn in COLOR_OPS.items():
        sel = (apply & (op == OPS.index(name))).view(-1, 1, 1, 1)
        out = torch.where(sel, fn(x, v), out)
    return out


def cutout(x: Tensor, side: Tensor, cx: Tensor, cy: Tensor, fill: Tensor) -> Tensor:
    """TorchSSL/USB CutoutAbs per image: corner = int(max(0, centre - side/2)), far corner = int(min(size, corner +
    side)), both included; side <= 0 leaves the image alone."""
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


def flip_pad_crop(x: Tensor, flip: Tensor, top: Tensor, left: Tensor, pad: int, reflect: bool) -> Tensor:
    """Horizontal flip where `flip`, then pad by `pad` (reflect-101 or zeros) and crop back at (top, left):
    one gather per image."""
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) + top.view(-1, 1, 1) - pad
    cols = torch.arange(w, device=x.device).view(1, 1, w) + left.view(-1, 1, 1) - pad
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    if reflect:  # reflect-101: -1 -> 1, h -> h - 2 (pad < size)
        rows = torch.where(rows < 0, -rows, torch.where(rows >= h, 2 * (h - 1) - rows, rows))
        cols = torch.where(cols < 0, -cols, torch.where(cols >= w, 2 * (w - 1) - cols, cols))
        inside = torch.ones_like(inside)
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    cols = torch.where(flip.view(-1, 1, 1), w - 1 - cols, cols)
    flat = (rows * w + cols).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
    return torch.where(inside.unsqueeze(1), out, torch.zeros_like(out))


# ---------------------------------------------------------------- the batched transforms
class DeviceTransform:
    """`t(images_uint8_nchw, draws) -> normalized float32 (B, 3, H, W)`; `num_draws` uniforms per image."""

    num_draws = 0

    def __init__(self, mean, std, channels_last: bool = False) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        std_ = np.asarray(self.std, np.float32)
        self._scale = (1.0 / (255.0 * std_)).astype(np.float32)
        self._bias = (-np.asarray(self.mean, np.float32) / std_).astype(np.float32)
        self.channels_last = channels_last

    def normalize(self, x: Tensor) -> Tensor:
        scale = torch.as_tensor(self._scale, device=x.device).view(1, 3, 1, 1)
        bias = torch.as_tensor(self._bias, device=x.device).view(1, 3, 1, 1)
        out = x.float() * scale + bias
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def augment(self, x: Tensor, u: Tensor) -> Tensor:
        return x

    def __call__(self, images: Tensor, u: Tensor) -> Tensor:
        return self.normalize(self.augment(images.float(), u))


class DeviceWeak(DeviceTransform):
    """Flip (p = 0.5) then pad-and-random-crop, draws (flip, top, left) as WeakTransform."""

    num_draws = 3

    def __init__(self, mean, std, weak: WeakAugConfig, channels_last: bool = False) -> None:
        super().__init__(mean, std, channels_last)
        self.weak = weak

    def geometric(self, x: Tensor, u: Tensor) -> Tensor:
        p = self.weak.crop_padding
        flip = (u[:, 0] < 0.5) & self.weak.flip
        top = torch.trunc(u[:, 1] * (2 * p + 1)).long()
        left = torch.trunc(u[:, 2] * (2 * p + 1)).long()
        if p == 0 and not self.weak.flip:
            return x
        return flip_pad_crop(x, flip, top, left, p, self.weak.pad_mode == "reflect")

    def augment(self, x: Tensor, u: Tensor) -> Tensor:
        return self.geometric(x, u[:, :3])


class DeviceStrong(DeviceWeak):
    """Weak geometry + RandAugment (num_ops ops with replacement, magnitude uniform per op, each kept with
    op_prob) + Cutout, before or after the geometry, with StrongTransform's draw layout."""

    def __init__(self, mean, std, weak: WeakAugConfig, strong: StrongAugConfig, channels_last: bool = False):
        super().__init__(mean, std, weak, channels_last)
        self.strong = strong
        self.num_draws = 3 + 3 * strong.num_ops + 3
        lo = torch.tensor([RANGES[n][0] for n in OPS], dtype=torch.float64)
        self._lo, self._span = lo, torch.tensor([RANGES[n][1] for n in OPS], dtype=torch.float64) - lo

    def randaugment(self, x: Tensor, u: Tensor) -> Tensor:
        s = self.strong
        lo, span = self._lo.to(x.device), self._span.to(x.device)
        for i in range(s.num_ops):
            pick, keep, mag = u[:, 3 * i], u[:, 3 * i + 1], u[:, 3 * i + 2]
            op = torch.trunc(pick * len(OPS)).long()
            x = randaugment_slot(x, op, lo[op] + span[op] * mag, keep < s.op_prob)
        c = u[:, -3:]
        h, w = x.shape[-2:]
        side = (c[:, 0] * s.cutout if s.cutout_random_size else torch.full_like(c[:, 0], s.cutout)) * w
        fill = torch.tensor(s.cutout_fill, device=x.device)
        return cutout(x, side, c[:, 1] * w, c[:, 2] * h, fill)

    def augment(self, x: Tensor, u: Tensor) -> Tensor:
        geo, ra = u[:, :3], u[:, 3:]
        if self.strong.order == "before":
            return self.geometric(self.randaugment(x, ra), geo)
        return self.randaugment(self.geometric(x, geo), ra)


def to_device_transform(t: Transform, channels_last: bool = False) -> DeviceTransform:
    """The batched twin of a host transform: same kind, statistics and options."""
    if isinstance(t, StrongTransform):
        return DeviceStrong(t.mean, t.std, t.weak, t.strong, channels_last)
    if isinstance(t, WeakTransform):
        return DeviceWeak(t.mean, t.std, t.weak, channels_last)
    return DeviceTransform(t.mean, t.std, channels_last)
