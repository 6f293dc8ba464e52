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

How a RandAugment slot runs (one op per image, 14 op kinds): not op by op (every op's kernels on every image, then a
per-image select, which made the kernel count and the time grow with the number of op kinds), but as three op
FAMILIES, each computed once for the whole batch with per-sample parameters. Each family's parameters have a neutral
value that leaves an image exactly unchanged, so every image goes through every family and no select is needed:
- geometry: Rotate, ShearX/Y, TranslateX/Y are one affine map (a rotation plus shears and shifts; the identity for
  the other ops), applied by one gather;
- point ops: Identity, Brightness, Contrast, AutoContrast, Posterize, Solarize, Equalize are functions of the pixel
  level per channel, so each sample gets one 256-entry table per channel, built by a fixed chain of small (B, 3, 256)
  stages (a blend with a flat image, a linear stretch, a bit mask, an inversion above a threshold, the Equalize
  table), each neutral except for the sample's own op; the image is then looked up in its table by one gather;
- neighbourhood blend: Color (blend with gray(x)) and Sharpness (blend with SMOOTH(x)) are one blend with a
  degenerate image chosen per sample, factor 1 (exactly x) for the other ops.
The per-sample parameters of all slots come from one small table indexed by op id (parameter = a + b * magnitude).
A slot is thus 90 kernels whatever the draws (the per-op version: 216), with static shapes and no host sync, so a
batch can be captured in a CUDA graph (`data.device_graph`, device_dataset.CapturedViews). Every table stage repeats
the per-pixel op's float32 / float64 roundings on the 256 levels, so the outputs are bit for bit those of the per-op
implementation (tests/unit/test_device_augment_fused.py holds a transcription of it and compares them on real and
adversarial images). The flip + crop and Cutout index maps, and the constants, are made once per shape and device.

Randomness: the draws of sample b are `uniform(mix_seed(seed_b, j))` for j = 0, 1, ... (a counter-based hash of
the sample's stream seed, computed on the host with NumPy in a few microseconds per batch): first the geometry
(flip, top, left), then per RandAugment op (which op, apply?, magnitude), then the cutout size and centre. A sample's
augmentation is therefore a function of (seed, position in the stream), whatever the batch composition, process
count or device: resume is exact. It is a different random stream from the CPU path's PCG64 draws (same
distributions), so the two paths see different augmentations of the same sample.
"""

from __future__ import annotations

import functools
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
def gray(x: Tensor) -> Tensor:
    """PIL convert('L') on integer-valued RGB: (19595 R + 38470 G + 7471 B + 2^15) >> 16, shape (B, 1, H, W).

    In float32, exactly: every partial sum is an integer below 255 * 2^16 + 2^15 < 2^24, and the shift is a division
    by a power of two (so a fused multiply-add, or any order of the sums, gives the same integers)."""
    r, g, b = x.unbind(1)
    s = (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).add_(0x8000)
    return s.mul_(2.0**-16).floor_().unsqueeze(1)


def _blend(degenerate: Tensor, x: Tensor, f: Tensor) -> Tensor:
    """PIL Image.blend for 0 <= f <= 1: trunc(d + f (x - d)) in float32, as three roundings (no fused multiply-add).
    f = 1 returns x exactly (x - d and d + (x - d) are exact on integers 0..255)."""
    return (x - degenerate).mul_(f).add_(degenerate).trunc_()


# ---------------------------------------------------------------- one RandAugment slot as three op families
# Per-sample parameters of the families, one row per op (+ a last row for "no op"): parameter = a + b * magnitude.
# Each parameter's neutral value leaves an image exactly unchanged, so every family can run on every image.
_PARAMS = ("f_flat", "threshold", "f_near", "contrast", "autocontrast", "bits", "equalize", "sharpness", "angle",
           "zero_0", "shear_x", "shift_x", "shear_y", "zero_1", "shift_y")  # fmt: skip
_AFFINE_ADD = slice(_PARAMS.index("zero_0"), _PARAMS.index("shift_y") + 1)  # added to the rotation's (B, 6) matrix
_P = {name: i for i, name in enumerate(_PARAMS)}
_NEUTRAL = {"f_flat": 1.0, "bits": 8.0, "threshold": 256.0, "f_near": 1.0}  # the others: 0
_OP_PARAMS = {  # op -> {parameter: (a, b)}; "w" / "h" stand for the image width / height
    "AutoContrast": {"autocontrast": (1, 0)}, "Brightness": {"f_flat": (0, 1)}, "Color": {"f_near": (0, 1)},
    "Contrast": {"f_flat": (0, 1), "contrast": (1, 0)}, "Equalize": {"equalize": (1, 0)}, "Identity": {},
    "Posterize": {"bits": (0, 1)}, "Rotate": {"angle": (0, 1)}, "Sharpness": {"f_near": (0, 1), "sharpness": (1, 0)},
    "ShearX": {"shear_x": (0, 1)}, "ShearY": {"shear_y": (0, 1)}, "Solarize": {"threshold": (0, 1)},
    "TranslateX": {"shift_x": (0, "w")}, "TranslateY": {"shift_y": (0, "h")},
}  # fmt: skip
NO_OP = len(OPS)  # the table row of a drawn op that is not applied


@functools.cache  # never evicted: a captured CUDA graph reads these tensors
def _param_table(h: int, w: int, device: torch.device) -> Tensor:
    """(len(OPS) + 1, 2, len(_PARAMS)) float64: rows (a, b) per op, the last row "no op". Built once per device."""
    tab = np.zeros((len(OPS) + 1, 2, len(_PARAMS)))
    for name, value in _NEUTRAL.items():
        tab[:, 0, _P[name]] = value
    for i, name in enumerate(OPS):
        for param, (a, b) in _OP_PARAMS[name].items():
            tab[i, :, _P[param]] = (a, {"w": w, "h": h}.get(b, b))
    return torch.tensor(tab, dtype=torch.float64, device=device)


@functools.cache  # never evicted: a captured CUDA graph reads these tensors
def _const(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant on the device, copied once (a host-to-device copy per call could not be captured)."""
    return torch.tensor(values, dtype=dtype, device=device)


def _affine(p: Tensor, h: int, w: int) -> Tensor:
    """(B, 6) float64 inverse maps (PIL's Image.transform data) of Rotate, ShearX/Y, TranslateX/Y in one formula:
    a rotation by `angle` about the centre, plus the shears and shifts. With the other parameters at 0 each reduces
    exactly to its op's matrix (cos 0 = 1, sin 0 = 0, and x + 0 = x), and with all at 0 to the identity."""
    t = -p[..., _P["angle"]] * (math.pi / 180.0)  # PIL rotates counter-clockwise
    cs, sn = torch.cos(t), torch.sin(t)
    rot = torch.stack([cs, sn, -sn, cs], -1).view(*t.shape, 2, 2)
    centre = _const((w / 2.0, h / 2.0), torch.float64, p.device)
    shift = (rot * -centre).sum(-1) + centre  # (cs * -cx + sn * -cy) + cx, (-sn * -cx + cs * -cy) + cy
    return torch.cat([rot, shift.unsqueeze(-1)], -1).view(*t.shape, 6) + p[..., _AFFINE_ADD]


@functools.cache  # never evicted: a captured CUDA graph reads these tensors
def _grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel indices (x, y) as float64 (2, H, W), and the interior mask (all but the 1-px border), made once."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float64),
        torch.arange(w, device=device, dtype=torch.float64),
        indexing="ij",
    )
    inner = torch.zeros(h, w, dtype=torch.bool, device=device)
    inner[1:-1, 1:-1] = True
    return torch.stack([xs, ys]), inner


def warp_affine(x: Tensor, m: Tensor, fill: float = 0.0) -> Tensor:
    """PIL Image.transform(AFFINE, NEAREST): output pixel centre (x + .5, y + .5) reads input floor(m @ centre);
    outside the image -> fill. One gather for the whole batch; the identity map returns x exactly."""
    b, c, h, w = x.shape
    xs, ys = (_grid(h, w, x.device)[0] + 0.5).unbind(0)  # pixel centres (exact)
    m = m.view(b, 2, 3, 1, 1)
    src = torch.floor(m[:, :, 0] * xs + m[:, :, 1] * ys + m[:, :, 2]).long()  # (B, 2, H, W): source x, y
    near = src.clamp(
        _const((0, 0), torch.int64, x.device).view(1, 2, 1, 1),
        _const((w - 1, h - 1), torch.int64, x.device).view(1, 2, 1, 1),
    )
    inside = (src == near).all(1, keepdim=True)
    flat = (near * _const((1, w), torch.int64, x.device).view(1, 2, 1, 1)).sum(1).view(b, 1, h * w)
    out = x.reshape(b, c, h * w).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)
    return torch.where(inside, out, fill)


def _smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter (3x3 ones, centre 5, / 13, rounded; the 1-px border keeps the original), exactly: separable
    integer box sums (<= 3315, exact in float32), round(s / 13) as floor((s + 6.5) / 13) (never within 1/26 of an
    integer), the border by a static mask."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x
    r = x[..., :, :-2] + x[..., :, 1:-1]
    r += x[..., :, 2:]
    s = r[..., :-2, :] + r[..., 1:-1, :]
    s += r[..., 2:, :]
    s = s.add_(x[..., 1:-1, 1:-1], alpha=4).add_(6.5).div_(13).floor_()
    return torch.where(_grid(h, w, x.device)[1], F.pad(s, (1, 1, 1, 1)), x)


def _point_lut(yi: Tensor, g: Tensor, p: dict[str, Tensor]) -> Tensor:
    """(B, 3, 256) float32: each sample's point op as a lookup table per channel, the ramp for other samples.

    One chain of table stages, each neutral except for the sample's own op: a blend with a flat image (Identity,
    Brightness: 0, Contrast: the mean gray level), AutoContrast, Posterize, Solarize, Equalize. A stage computes
    on the 256 levels exactly what the per-pixel op computes on a pixel of that level (the same float32 / float64
    roundings), so looking the image up in the table equals applying the op. p: the parameters, (B, 1, 1) each."""
    b, c, n = yi.shape
    dev = yi.device
    hist = torch.zeros(b, c, 256, dtype=torch.int64, device=dev)
    hist.scatter_add_(2, yi, _const((1,), torch.int64, dev).view(()).expand_as(yi))
    below = hist.cumsum(2)
    lo = (below == 0).sum(2, keepdim=True, dtype=torch.float64)  # darkest level present, per channel
    hi = (below < n).sum(2, keepdim=True)  # brightest level present
    below -= hist  # pixels below each level
    levels, n_ = _const(tuple(range(256)), torch.float32, dev), _const((n,), torch.float64, dev)
    # Identity / Brightness / Contrast: PIL's blend with a flat image at 0 or at int(mean gray + 0.5)
    mean = torch.floor(g.sum(dim=(1, 2, 3), dtype=torch.float64) / n_ + 0.5).view(b, 1, 1)  # IEEE division
    t = _blend((mean * p["contrast"]).float(), levels, p["f_flat32"])  # (B, 1, 256)
    # AutoContrast: per channel trunc(level * 255 / span - lo * 255 / span) in float64; scale 1, offset 0 when the
    # channel is flat or the op is another
    span = (hi - lo) * p["autocontrast"]
    live = span > 0
    scale = _const((255.0,), torch.float64, dev) / torch.where(live, span, 255.0)
    offset = -(lo * live) * scale
    t = torch.trunc((t.double() * scale + offset).clamp_(0, 255))  # (B, 3, 256)
    # Posterize: keep the top max(1, int(v)) bits: floor(t / q) q with q = 2^(8 - bits) (1 = all), exact
    t = torch.floor(t / p["step"]).mul_(p["step"]).float()
    # Solarize: invert the levels >= v (256 = none)
    t = torch.where(t < p["threshold32"], t, 255 - t)
    # Equalize (PIL ImageOps.equalize): step = (N - #top level) // 255, lut[i] = (step // 2 + #below i) // step;
    # step 0 leaves the image alone
    step = (n - hist.gather(2, hi)) // 255
    safe = step.clamp_min(1)
    eq = torch.clamp((safe // 2 + below) // safe, max=255)
    return torch.where(step * p["equalize"] > 0, eq, t)


def slot_params(op: Tensor, v: Tensor, apply: Tensor, h: int, w: int) -> Tensor:
    """The families' per-sample parameters of any number of slots at once, from op ids, magnitudes and apply flags
    of shape (B, k): (B, k, P + 7) float64 = the parameters, Posterize's step 2^(8 - bits), the affine map (6)."""
    tab = _param_table(h, w, op.device)[torch.where(apply, op, NO_OP)]  # (B, k, 2, P)
    p = torch.addcmul(tab[..., 0, :], tab[..., 1, :], v.double().unsqueeze(-1))  # a + b v: exact (a = 0 or b = 0)
    bits = torch.clamp(torch.trunc(p[..., _P["bits"]]), min=1, max=8).long()
    step = torch.bitwise_left_shift(_const((1,), torch.int64, op.device), 8 - bits).double()  # integer: exact
    return torch.cat([p, step.unsqueeze(-1), _affine(p, h, w)], -1)


_EXTRA = ("step", "m0", "m1", "m2", "m3", "m4", "m5")
_FLOAT32 = slice(0, 3)  # f_flat, threshold, f_near: used in float32, as the per-op code did


def fused_slot(x: Tensor, params: Tensor) -> Tensor:
    """One slot given its parameters (`slot_params(...)[:, j]`): geometry (one warp) -> point ops (one table
    lookup) -> Color / Sharpness (one blend), each family neutral for the samples of the others."""
    b, c, h, w = x.shape
    y = warp_affine(x, params[:, len(_PARAMS) + 1 :])
    cols = params.view(b, -1, 1, 1).unbind(1)
    p = dict(zip(_PARAMS + _EXTRA, cols))
    p["f_flat32"], p["threshold32"], p["f_near32"] = params[:, _FLOAT32].float().view(b, 3, 1, 1).unbind(1)
    g = gray(y)
    yi = y.to(torch.int64).view(b, c, h * w)
    z = _point_lut(yi, g, p).gather(2, yi).view(b, c, h, w)
    d = torch.where(p["sharpness"].unsqueeze(1) > 0, _smooth(y), g)
    return _blend(d, z, p["f_near32"].unsqueeze(1))


def randaugment_slot(x: Tensor, op: Tensor, v: Tensor, apply: Tensor) -> Tensor:
    """One RandAugment op per image (op ids, magnitudes, apply flags per image) as three op families, each run once
    on the whole batch with per-sample parameters: a fixed sequence of kernels whatever the draws (no host sync,
    static shapes)."""
    return fused_slot(x, slot_params(op.unsqueeze(1), v.unsqueeze(1), apply.unsqueeze(1), *x.shape[-2:])[:, 0])


def apply_op(x: Tensor, name: str, v: Tensor) -> Tensor:
    """One named op on every image of the batch (magnitude v per image): for tests and the fidelity benchmark."""
    op = torch.full(v.shape, OPS.index(name), dtype=torch.int64, device=x.device)
    return randaugment_slot(x, op, v.to(x.device), torch.ones_like(op, dtype=torch.bool))


def cutout(x: Tensor, side: Tensor, cx: Tensor, cy: Tensor, fill: Tensor) -> Tensor:
    """TorchSSL/USB CutoutAbs per image: corner = int(max(0, centre - side/2)), far corner = int(min(size, corner +
    side)), both included; side <= 0 leaves the image alone. Both axes at once."""
    b, c, h, w = x.shape
    side = side.double().unsqueeze(1)
    near = torch.trunc(torch.clamp(torch.stack([cx, cy], 1).double() - side / 2.0, min=0.0))  # (B, 2): x0, y0
    far = torch.trunc(torch.minimum(near + side, _const((float(w), float(h)), torch.float64, x.device)))
    xy = _grid(h, w, x.device)[0]
    box = ((xy >= near.view(b, 2, 1, 1)) & (xy <= far.view(b, 2, 1, 1))).all(1) & (side > 0).view(b, 1, 1)
    return torch.where(box.unsqueeze(1), fill.to(x.dtype).view(1, c, 1, 1), x)


@functools.cache  # never evicted: a captured CUDA graph reads these tensors
def _crop_maps(h: int, w: int, pad: int, reflect: bool, device: torch.device) -> tuple[Tensor, ...]:
    """Per crop offset (0 .. 2 pad): the source row of each output row (2p+1, H) and whether it is inside the image,
    the same for columns, unflipped and flipped (2, 2p+1, W). Made once per shape and device."""

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        src = np.arange(n)[None, :] + np.arange(2 * pad + 1)[:, None] - pad
        inside = (src >= 0) & (src < n)
        if reflect:  # reflect-101: -1 -> 1, n -> n - 2 (pad < size)
            src = np.where(src < 0, -src, np.where(src >= n, 2 * (n - 1) - src, src))
            inside[:] = True
        return np.clip(src, 0, n - 1), inside

    (rows, rows_in), (cols, cols_in) = axis(h), axis(w)
    arrays = (rows, rows_in, np.stack([cols, w - 1 - cols]), cols_in)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)


def flip_pad_crop(x: Tensor, flip: Tensor, top: Tensor, left: Tensor, pad: int, reflect: bool) -> Tensor:
    """Horizontal flip where `flip`, then pad by `pad` (reflect-101 or zeros) and crop back at (top, left):
    one gather for the whole batch, its indices looked up in small per-offset maps."""
    b, c, h, w = x.shape
    rows, rows_in, cols, cols_in = _crop_maps(h, w, pad, reflect, x.device)
    flat = (rows[top] * w).unsqueeze(2) + cols[flip.long(), left].unsqueeze(1)  # (B, H, W)
    out = x.reshape(b, c, h * w).gather(2, flat.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)
    if reflect:
        return out
    return torch.where((rows_in[top].unsqueeze(2) & cols_in[left].unsqueeze(1)).unsqueeze(1), out, 0.0)


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
        scale = _const(tuple(self._scale.tolist()), torch.float32, x.device).view(1, 3, 1, 1)
        bias = _const(tuple(self._bias.tolist()), torch.float32, x.device).view(1, 3, 1, 1)
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
        if p == 0 and not self.weak.flip:
            return x
        flip = (u[:, 0] < 0.5) & self.weak.flip
        top, left = torch.trunc(u[:, 1:3] * (2 * p + 1)).long().unbind(1)
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
        self._lo = tuple(RANGES[n][0] for n in OPS)
        self._span = tuple(float(np.float64(RANGES[n][1]) - RANGES[n][0]) for n in OPS)

    def randaugment(self, x: Tensor, u: Tensor) -> Tensor:
        s = self.strong
        b, _, h, w = x.shape
        if s.num_ops:  # the parameters of every slot at once, then one fused slot after the other
            pick, keep, mag = u[:, : 3 * s.num_ops].reshape(b, s.num_ops, 3).unbind(2)
            op = torch.trunc(pick * len(OPS)).long()
            lo, span = _const(self._lo, torch.float64, x.device), _const(self._span, torch.float64, x.device)
            params = slot_params(op, lo[op] + span[op] * mag, keep < s.op_prob, h, w)
            for i in range(s.num_ops):
                x = fused_slot(x, params[:, i])
        c = u[:, -3:]
        side = (c[:, 0] * s.cutout if s.cutout_random_size else torch.full_like(c[:, 0], s.cutout)) * w
        fill = _const(tuple(float(f) for f in s.cutout_fill), torch.float32, x.device)
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
