"""Weak and strong (FixMatch RandAugment + Cutout) augmentation as seeded functions of one image.

A transform is `t(img_hwc_uint8, seed) -> normalized CHW float tensor`. All randomness comes from a local
`np.random.Generator(seed)`, so a sample's views depend only on (image, seed): the same in every worker,
process count and restart, which is what makes resume exact.

The reference implementations (TorchSSL@f26e1d4, USB@1ef4cbe, FullMatch@c54c0b9: datasets/augmentation/
randaugment.py) run PIL operations. Each op
here reproduces the PIL semantics on uint8 arrays (tests compare against PIL): albumentations' kernels are
used where they compute the same thing (horizontal flip, padding, crop, posterize); albumentations' own
Equalize, AutoContrast, Solarize and Affine differ from PIL (LUT offsets, rounding, threshold scale, shear
about the centre instead of the top-left corner), so those ops are written here with cv2/numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import albumentations.augmentations.crops.functional as Fcrop
import albumentations.augmentations.geometric.functional as Fgeo
import albumentations.augmentations.pixel.functional as Fpix
import cv2
import numpy as np
import torch

from ssl_kd.data.config import AugmentConfig, DataConfig, StrongAugConfig, WeakAugConfig
from ssl_kd.errors import UserError, suggest

KINDS = ("weak", "strong", "test")
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- the 14 ops
# Every op maps (uint8 HWC RGB image, magnitude) -> new uint8 image and never writes into its input
# (inputs may be read-only memmaps).
def _lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Apply a (256,) or per-channel (256, 3) uint8 table."""
    if lut.ndim == 2:
        lut = lut.reshape(256, 1, 3)
    return cv2.LUT(np.ascontiguousarray(img), lut)


def identity(img: np.ndarray, v: float) -> np.ndarray:
    return img


_RAMP_COL = np.arange(256, dtype=np.float64)[:, None]
_RAMP_ROW = np.arange(256, dtype=np.int64)[None, :]


def auto_contrast(img: np.ndarray, v: float) -> np.ndarray:
    """PIL ImageOps.autocontrast(cutoff=0): per channel, stretch [min, max] to [0, 255], truncating."""
    planes = np.ascontiguousarray(img.transpose(2, 0, 1)).reshape(img.shape[2], -1)  # fast reductions
    lo = planes.min(1).astype(np.float64)
    span = planes.max(1) - lo
    live = span > 0
    scale = np.divide(255.0, span, out=np.ones_like(span), where=live)
    offset = np.where(live, -lo * scale, 0.0)
    lut = _RAMP_COL * scale + offset  # >= -eps, so astype's truncation is PIL's int()
    np.clip(lut, 0, 255, out=lut)
    return _lut(img, lut.astype(np.uint8))


def equalize(img: np.ndarray, v: float) -> np.ndarray:
    """PIL ImageOps.equalize: per channel, step = (#pixels - #in the top bin) // 255 and
    lut[i] = (step // 2 + #pixels below i) // step; step 0 (e.g. a single level) leaves the channel alone."""
    c = img.shape[2]
    hist = np.stack([cv2.calcHist([img], [k], None, [256], (0, 256)).ravel() for k in range(c)]).astype(np.int64)
    top = hist[np.arange(c), 255 - np.argmax(hist[:, ::-1] > 0, axis=1)]
    step = (hist.sum(1) - top) // 255
    safe = np.maximum(step, 1)[:, None]
    below = np.cumsum(hist, axis=1) - hist
    lut = np.where(step[:, None] > 0, np.minimum((safe // 2 + below) // safe, 255), _RAMP_ROW)
    return _lut(img, lut.T.astype(np.uint8))


def _blend(degenerate: np.ndarray | float, img: np.ndarray, factor: float) -> np.ndarray:
    """PIL Image.blend for 0 <= factor <= 1: out = trunc(d + f * (img - d)) in float32."""
    f = np.float32(factor)
    x = img.astype(np.float32)
    out = degenerate + f * (x - degenerate)
    return out.astype(np.uint8)


_LUMA = np.array([19595, 38470, 7471], np.int32)


def _gray(img: np.ndarray) -> np.ndarray:
    """PIL convert('L'): ITU-R 601-2 luma with 16-bit fixed-point weights, rounded; (H, W) int32."""
    return (img.astype(np.int32) @ _LUMA + 0x8000) >> 16


def brightness(img: np.ndarray, v: float) -> np.ndarray:
    """PIL ImageEnhance.Brightness: blend with black."""
    return _blend(np.float32(0.0), img, v)


def color(img: np.ndarray, v: float) -> np.ndarray:
    """PIL ImageEnhance.Color: blend with the grayscale image."""
    return _blend(_gray(img).astype(np.float32)[..., None], img, v)


def contrast(img: np.ndarray, v: float) -> np.ndarray:
    """PIL ImageEnhance.Contrast: blend with a flat image at the rounded mean gray level."""
    mean = int(_gray(img).mean() + 0.5)
    return _blend(np.float32(mean), img, v)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0


def sharpness(img: np.ndarray, v: float) -> np.ndarray:
    """PIL ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH, whose 1-px border is the original."""
    x = img.astype(np.float32)
    smooth = cv2.filter2D(x, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    smooth = np.round(smooth)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = x[0], x[-1], x[:, 0], x[:, -1]
    f = np.float32(v)
    return (smooth + f * (x - smooth)).astype(np.uint8)


def posterize(img: np.ndarray, v: float) -> np.ndarray:
    """PIL ImageOps.posterize with bits = max(1, int(v)): keep the top bits (albumentations' kernel)."""
    bits = max(1, int(v))
    return img if bits >= 8 else Fpix.posterize(img, bits)


def solarize(img: np.ndarray, v: float) -> np.ndarray:
    """PIL ImageOps.solarize: invert every value >= threshold v (v in [0, 256]; 256 = no-op)."""
    ramp = np.arange(256)
    return _lut(img, np.where(ramp < v, ramp, 255 - ramp).astype(np.uint8))


def _affine(img: np.ndarray, m: tuple[float, float, float, float, float, float]) -> np.ndarray:
    """PIL Image.transform(AFFINE, m, NEAREST, fill=0): output pixel centre (x+.5, y+.5) samples input
    floor(m @ centre). cv2's inverse-map nearest rounds m' @ (x, y), hence the half-pixel shift."""
    a, b, c, d, e, f = m
    mat = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]], np.float64)
    h, w = img.shape[:2]
    return cv2.warpAffine(
        np.ascontiguousarray(img), mat, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
    )  # fmt: skip


def rotate(img: np.ndarray, v: float) -> np.ndarray:
    """PIL Image.rotate(v): counter-clockwise about the centre, nearest, black fill."""
    h, w = img.shape[:2]
    t = -math.radians(v)
    cs, sn = math.cos(t), math.sin(t)
    cx, cy = w / 2.0, h / 2.0
    return _affine(img, (cs, sn, cs * -cx + sn * -cy + cx, -sn, cs, -sn * -cx + cs * -cy + cy))


def shear_x(img: np.ndarray, v: float) -> np.ndarray:
    """Shear about the top-left corner, as PIL's (1, v, 0, 0, 1, 0)."""
    return _affine(img, (1.0, v, 0.0, 0.0, 1.0, 0.0))


def shear_y(img: np.ndarray, v: float) -> np.ndarray:
    return _affine(img, (1.0, 0.0, 0.0, v, 1.0, 0.0))


def translate_x(img: np.ndarray, v: float) -> np.ndarray:
    """Shift by v * width pixels (v in [-0.3, 0.3])."""
    return _affine(img, (1.0, 0.0, v * img.shape[1], 0.0, 1.0, 0.0))


def translate_y(img: np.ndarray, v: float) -> np.ndarray:
    return _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, v * img.shape[0]))


# name -> (op, min magnitude, max magnitude): FixMatch's list as in TorchSSL/USB/FullMatch
# (TorchSSL@f26e1d4 datasets/augmentation/randaugment.py).
RANDAUGMENT_OPS: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], float, float]] = {
    "AutoContrast": (auto_contrast, 0.0, 1.0),
    "Brightness": (brightness, 0.05, 0.95),
    "Color": (color, 0.05, 0.95),
    "Contrast": (contrast, 0.05, 0.95),
    "Equalize": (equalize, 0.0, 1.0),
    "Identity": (identity, 0.0, 1.0),
    "Posterize": (posterize, 4.0, 8.0),
    "Rotate": (rotate, -30.0, 30.0),
    "Sharpness": (sharpness, 0.05, 0.95),
    "ShearX": (shear_x, -0.3, 0.3),
    "ShearY": (shear_y, -0.3, 0.3),
    "Solarize": (solarize, 0.0, 256.0),
    "TranslateX": (translate_x, -0.3, 0.3),
    "TranslateY": (translate_y, -0.3, 0.3),
}
_OP_TABLE = list(RANDAUGMENT_OPS.values())


def cutout(img: np.ndarray, side: float, cx: float, cy: float, fill: tuple[int, int, int]) -> np.ndarray:
    """TorchSSL/USB/FullMatch CutoutAbs: box corner = max(0, centre - side/2), far corner = min(size, corner + side),
    both truncated to int and both included (PIL's rectangle is inclusive).

    The centre: we draw it uniformly in [0, w) x [0, h) (`StrongTransform.randaugment`). The references call
    `np.random.uniform(w)`, which by NumPy's signature is uniform(low=w, high=1): a centre in (1, w], not [0, w).
    A quirk we do not follow: it shifts the box distribution by under one pixel and never changes which ops run.
    """
    if side <= 0:
        return img
    h, w = img.shape[:2]
    x0, y0 = int(max(0.0, cx - side / 2.0)), int(max(0.0, cy - side / 2.0))
    x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
    out = img.copy()
    out[y0 : y1 + 1, x0 : x1 + 1] = fill
    return out


# ---------------------------------------------------------------- the transform
class Transform:
    """`t(img_hwc_uint8, seed) -> FloatTensor (3, H, W)`, normalized; a pure function of (img, seed)."""

    kind = "test"

    def __init__(self, mean, std):
        mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.mean, self.std = tuple(mean.ravel().tolist()), tuple(std.ravel().tolist())
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._bias = (-mean / std).astype(np.float32)

    def augment(self, img: np.ndarray, seed: int = 0) -> np.ndarray:
        """The view as a uint8 HWC image, before normalisation."""
        return _rgb(img)

    def __call__(self, img: np.ndarray, seed: int = 0) -> torch.Tensor:
        return self.to_tensor(self.augment(img, seed))

    def to_tensor(self, img: np.ndarray) -> torch.Tensor:
        x = img.transpose(2, 0, 1).astype(np.float32, order="C")
        x *= self._scale
        x += self._bias
        return torch.from_numpy(x)

    def crop_uint8(self, img: np.ndarray, seed: int = 0) -> torch.Tensor:
        """The view as a uint8 CHW tensor: what leaves a loader worker when normalisation is deferred to the batch
        on the device (`ViewDataset(defer_normalize=True)`): a quarter of the bytes to pin and copy."""
        return torch.from_numpy(np.ascontiguousarray(self.augment(img, seed).transpose(2, 0, 1)))

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the float batch `__call__` makes image by image: the same float32 multiply, then
        add, element by element, so the values are identical on any device."""
        scale, bias = self._constants_on(batch.device)
        return batch.contiguous().to(torch.float32).mul_(scale).add_(bias)

    def _host_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 / (255 std), -mean / std) as float32 (3, 1, 1) host tensors."""
        return torch.from_numpy(self._scale), torch.from_numpy(self._bias)

    def _constants_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalisation constants on `device`, copied there once: a copy per batch makes the host wait for the
        GPU every step."""
        cached = self.__dict__.get("_on_device")
        if cached is None or cached[0].device != device:
            scale, bias = self._host_constants()
            cached = self._on_device = (scale.to(device), bias.to(device))
        return cached

    def __getstate__(self) -> dict:
        """DataLoader workers get the host constants only (never a copy on the GPU)."""
        state = dict(self.__dict__)
        state.pop("_on_device", None)
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class WeakTransform(Transform):
    """Horizontal flip (p=0.5) then pad-and-random-crop back to the input size (TorchSSL order)."""

    kind = "weak"

    def __init__(self, mean, std, weak: WeakAugConfig):
        super().__init__(mean, std)
        self.weak = weak
        self._border = cv2.BORDER_REFLECT_101 if weak.pad_mode == "reflect" else cv2.BORDER_CONSTANT

    def geometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(3).tolist()  # always three draws, so the stream does not depend on the config
        if self.weak.flip and u[0] < 0.5:
            img = Fgeo.hflip(img)
        p = self.weak.crop_padding
        if p > 0:
            h, w = img.shape[:2]
            padded = Fgeo.pad_with_params(np.ascontiguousarray(img), p, p, p, p, self._border, 0)
            top, left = int(u[1] * (2 * p + 1)), int(u[2] * (2 * p + 1))  # uniform on 0..2p, like RandomCrop
            img = Fcrop.crop(padded, left, top, left + w, top + h)
        return img

    def augment(self, img: np.ndarray, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(int(seed) & _MASK64)
        return self.geometric(_rgb(img), rng)


class StrongTransform(WeakTransform):
    """Weak geometry + RandAugment (num_ops ops drawn with replacement, magnitude uniform per op, each kept
    with op_prob) + Cutout; RandAugment+Cutout run after (USB, FullMatch) or before (TorchSSL) flip+crop."""

    kind = "strong"

    def __init__(self, mean, std, weak: WeakAugConfig, strong: StrongAugConfig):
        super().__init__(mean, std, weak)
        self.strong = strong
        self._fill = tuple(int(c) for c in strong.cutout_fill)

    def randaugment(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.strong
        u = rng.random(3 * s.num_ops + 3).tolist()  # (which op, apply?, magnitude) per op, then cutout
        for i in range(s.num_ops):
            pick, keep, mag = u[3 * i : 3 * i + 3]
            if keep < s.op_prob:
                op, lo, hi = _OP_TABLE[int(pick * len(_OP_TABLE))]  # uniform with replacement
                img = op(img, lo + (hi - lo) * mag)
        c = u[-3:]
        h, w = img.shape[:2]
        side = (c[0] * s.cutout if s.cutout_random_size else s.cutout) * w
        return cutout(img, side, c[1] * w, c[2] * h, self._fill)

    def augment(self, img: np.ndarray, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(int(seed) & _MASK64)
        img = _rgb(img)
        if self.strong.order == "before":
            return self.geometric(self.randaugment(img, rng), rng)
        return self.randaugment(self.geometric(img, rng), rng)


def describe_views(cfg: DataConfig, bundle) -> str:
    """One line for --dry-run: how the weak / strong / test views are made."""
    s = cfg.augment.strong
    size = f"U[0, {s.cutout:g}]" if s.cutout_random_size else f"{s.cutout:g}"
    ra = f"RandAugment {s.num_ops} op(s) each p={s.op_prob:g} + cutout {size} x width fill {s.cutout_fill}"
    t = getattr(bundle, "transform", None)
    if t is not None:
        train = (
            f"RandomResizedCrop {bundle.image_size} scale {list(t.scale)} ratio [{t.ratio[0]:.3g}, {t.ratio[1]:.3g}]"
            if t.train == "random_resized_crop"
            else f"resize {math.floor(bundle.image_size / t.crop_pct + 1e-9)} + centre crop {bundle.image_size}"
        )
        test = (
            f"resize {math.floor(bundle.image_size / t.crop_pct + 1e-9)} + centre crop {bundle.image_size}"
            if t.eval == "resize_center_crop"
            else f"resize to {bundle.image_size}"
        )
        decode = f"fast decode (gap {t.decode_gap:g})" if t.fast_decode else "full decode"
        extra = (" + flip" if t.flip else "") + (f" + color jitter {t.color_jitter}" if any(t.color_jitter) else "")
        extra += f" + lighting {t.lighting:g}" if t.lighting else ""
        return f"large images: weak = {train}{extra}; strong = weak + {ra}; test = {test}; {decode}"
    w = cfg.augment.weak
    return (
        f"augment: weak = {'flip + ' if w.flip else ''}crop pad {w.crop_padding} {w.pad_mode}; strong = {ra}, "
        f"{s.order} the weak flip + crop"
    )


def build_transform(kind: str, bundle, aug_cfg: AugmentConfig | DataConfig | None = None) -> Transform:
    """The 'weak' | 'strong' | 'test' transform for a dataset bundle (mean/std come from the bundle)."""
    if kind not in KINDS:
        raise UserError(f"unknown transform kind '{kind}'; valid: {', '.join(KINDS)}.{suggest(kind, KINDS)}")
    if isinstance(aug_cfg, DataConfig):
        aug_cfg = aug_cfg.augment
    aug_cfg = aug_cfg or AugmentConfig()
    if getattr(bundle, "transform", None) is not None:  # large images: crops decoded per sample
        from ssl_kd.data.large_image import build_crop_transform

        return build_crop_transform(kind, bundle, bundle.transform, aug_cfg.strong)
    if kind == "test":
        return Transform(bundle.mean, bundle.std)
    if kind == "weak":
        return WeakTransform(bundle.mean, bundle.std, aug_cfg.weak)
    return StrongTransform(bundle.mean, bundle.std, aug_cfg.weak, aug_cfg.strong)


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"transforms take uint8 HWC images, got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img
