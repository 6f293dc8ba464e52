"""Large-image (ImageNet-style) transforms on the host: torchvision's RandomResizedCrop + flip for training views,
resize + centre crop for evaluation, with seeded, per-sample randomness and reduced-size JPEG decoding.

Semantics are torchvision's (v0.29, transforms/v2/_geometry.py and functional/_geometry.py):
- the train box is `RandomResizedCrop.get_params`: up to 10 tries of (area ~ U[scale] * H * W, log aspect ~
  U[log ratio]), w = round(sqrt(area * aspect)), h = round(sqrt(area / aspect)), accepted when 0 < w <= W and
  0 < h <= H, then top = randint(0, H - h + 1), left = randint(0, W - w + 1); else the centre-crop fallback (the
  aspect clamped into `ratio`). The uniforms come from the project's counter hash of the view's seed (`mix_seeds`),
  not torch's generator, so a sample's box is a pure function of (stream seed, stream position, view), whatever the
  worker or process count, and after a resume;
- the crop is resized with bilinear interpolation and antialiasing on uint8 (`v2.functional.resize`, the kernel
  torchvision's tensor transforms use), so a box gives exactly `v2.functional.resized_crop(decoded, *box)`;
- eval: `Resize(floor(size / crop_pct))` (shorter side; the longer one int(short * long / short)) then
  `CenterCrop(size)` (top = int(round((H - size) / 2))).

`fast_decode` decodes JPEGs at 1/2, 1/4 or 1/8 in the DCT domain (libjpeg scaled IDCT, as PIL's `draft`) when the
box stays at least `decode_gap` (default 2) times the output size there; the box is mapped into the reduced image
(rounded to its pixel grid).
Images stay uint8 until the last step, which normalises the output crop into a float tensor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import ColorJitter

from ssl_kd.data.augment import StrongTransform, Transform
from ssl_kd.data.config import StrongAugConfig, TransformConfig, WeakAugConfig
from ssl_kd.data.hashing import mix_seed, mix_seeds
from ssl_kd.data.image_files import EncodedImage, largest_reduction

Box = tuple[int, int, int, int]  # top, left, height, width (torchvision's order), full-resolution pixels
TRIES = 10
JITTER, LIGHT = 2 * TRIES + 3, 2 * TRIES + 11  # first draw of the colour jitter (8) and of the lighting (6)
# AlexNet's PCA lighting (fb.resnet.torch datasets/imagenet.lua; pytorch-classification's Lighting): RGB eigen-pairs
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
_U53 = 2.0**-53
log = logging.getLogger("ssl_kd.data")


def hash_uniforms(seed: int, n: int) -> np.ndarray:
    """n uniforms in [0, 1) (53-bit), u[k] a function of (seed, k) only: splitmix64 through `mix_seeds`."""
    bits = mix_seeds(int(seed), np.arange(n, dtype=np.uint64)) >> np.uint64(10)
    return bits.astype(np.float64) * _U53


def rrc_box(u: np.ndarray, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
    """torchvision `RandomResizedCrop.get_params` driven by given uniforms: u[2t], u[2t+1] for try t (area, log
    aspect), u[20], u[21] for the accepted box's top and left."""
    area = h * w
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    for t in range(TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        aspect = math.exp(lr0 + (lr1 - lr0) * u[2 * t + 1])
        bw = int(round(math.sqrt(target * aspect)))
        bh = int(round(math.sqrt(target / aspect)))
        if 0 < bw <= w and 0 < bh <= h:
            top = int(u[2 * TRIES] * (h - bh + 1))
            left = int(u[2 * TRIES + 1] * (w - bw + 1))
            return top, left, bh, bw
    in_ratio = w / h
    if in_ratio < min(ratio):
        bw, bh = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        bh, bw = h, int(round(h * max(ratio)))
    else:
        bw, bh = w, h
    return (h - bh) // 2, (w - bw) // 2, bh, bw


def resize_shorter(h: int, w: int, short: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `short`, the longer int(short * long / short_side)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def center_box(h: int, w: int, size: int) -> tuple[int, int]:
    """CenterCrop's (top, left) (torchvision: int(round((H - size) / 2.0)))."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, *size) uint8, bilinear with antialiasing: torch's uint8 kernel, as
    `v2.functional.resize(antialias=True)` calls it, fed a channels-last copy (its fast layout; same pixels)."""
    x = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def _decoded(img: EncodedImage | np.ndarray, reduce: int) -> np.ndarray:
    if isinstance(img, EncodedImage):
        return img.decode(reduce)
    img = np.asarray(img)  # an array image (a train_source's, a memmap): torch wants a writable buffer
    return img if img.flags.writeable else img.copy()


def _size(img: EncodedImage | np.ndarray) -> tuple[int, int]:
    return img.size if isinstance(img, EncodedImage) else tuple(np.asarray(img).shape[:2])


def resized_crop(img: EncodedImage | np.ndarray, box: Box, out: int, gap: float | None) -> torch.Tensor:
    """The box (full-resolution pixels) resized to out x out: (3, out, out) uint8. With `fast_decode` a JPEG is
    decoded at the largest reduction keeping the box >= gap * out (None: full decode), and the box is rounded to the
    reduced pixel grid."""
    top, left, bh, bw = box
    r = largest_reduction(gap * out, gap * out, bh, bw) if gap and isinstance(img, EncodedImage) else 1
    x = _decoded(img, r)
    if r > 1:
        rh, rw = x.shape[:2]
        t, lft = min(round(top / r), rh - 1), min(round(left / r), rw - 1)
        b, rt = min(max(round((top + bh) / r), t + 1), rh), min(max(round((left + bw) / r), lft + 1), rw)
        top, left, bh, bw = t, lft, b - t, rt - lft
    crop = _chw(x)[:, top : top + bh, left : left + bw]
    return resize_uint8(crop, (out, out))


def resize_center_crop(img: EncodedImage | np.ndarray, out: int, crop_pct: float, gap: float | None) -> torch.Tensor:
    """Shorter side to floor(out / crop_pct), then the centre out x out: (3, out, out) uint8."""
    h, w = _size(img)
    rh, rw = resize_shorter(h, w, int(math.floor(out / crop_pct + 1e-9)))
    r = largest_reduction(gap * rh, gap * rw, h, w) if gap and isinstance(img, EncodedImage) else 1
    resized = resize_uint8(_chw(_decoded(img, r)), (rh, rw))
    top, left = center_box(rh, rw, out)
    return resized[:, top : top + out, left : left + out]


def squash(img: EncodedImage | np.ndarray, out: int, gap: float | None) -> torch.Tensor:
    """The whole image resized to out x out (no crop): (3, out, out) uint8."""
    h, w = _size(img)
    r = largest_reduction(gap * out, gap * out, h, w) if gap and isinstance(img, EncodedImage) else 1
    return resize_uint8(_chw(_decoded(img, r)), (out, out))


def jitter_params(u: np.ndarray, strengths: Sequence[float]) -> dict:
    """torchvision v2 `ColorJitter.make_params` from 8 uniforms: the order of the four adjustments (a uniformly random
    permutation, as `torch.randperm(4)`) and each factor uniform in [max(0, 1 - s), 1 + s] (hue: [-s, s])."""
    b, c, s, h = strengths
    factor = lambda x, v: None if x == 0 else max(0.0, 1 - x) + (1 + x - max(0.0, 1 - x)) * v  # noqa: E731
    return dict(
        fn_idx=torch.as_tensor(np.argsort(u[:4], kind="stable")), brightness_factor=factor(b, u[4]),
        contrast_factor=factor(c, u[5]), saturation_factor=factor(s, u[6]),
        hue_factor=None if h == 0 else -h + 2 * h * u[7],
    )  # fmt: skip


def lighting_shift(u: np.ndarray, alphastd: float) -> torch.Tensor:
    """The RGB offset (0..1 scale) of AlexNet's lighting noise: alpha ~ N(0, alphastd^2) per eigenvector (Box-Muller
    on 6 uniforms), offset = eigvec @ (alpha * eigval)."""
    r = np.sqrt(-2.0 * np.log1p(-u[:3])) * np.cos(2 * np.pi * u[3:6])
    alpha = torch.tensor(r * alphastd, dtype=torch.float32)
    return EIGVEC @ (alpha * EIGVAL)


class CropTransform(Transform):
    """`t(image, seed) -> (3, size, size)` normalised float tensor, for `EncodedImage`s (or decoded HWC arrays).

    kind 'test': the eval crop (no randomness); 'weak': the train crop + flip; 'strong': the weak view followed by
    the `augment.strong` RandAugment + Cutout (on the output crop, with a generator seeded from the view's seed as
    `StrongTransform` does)."""

    def __init__(
        self, mean, std, cfg: TransformConfig, size: int, kind: str = "test", strong: StrongAugConfig | None = None
    ):  # fmt: skip
        super().__init__(mean, std)
        self.cfg, self.size, self.kind = cfg, int(size), kind
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._inv = (1.0 / (255.0 * torch.tensor(self.std, dtype=torch.float32))).view(3, 1, 1)
        self._bias = -self._mean / torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        self._ra = StrongTransform(mean, std, WeakAugConfig(), strong) if kind == "strong" else None
        self._jitter = ColorJitter()  # its `transform(x, params)` applies given factors in the given order

    def box(self, h: int, w: int, seed: int) -> tuple[Box, bool]:
        """(train box, flip) of a view seed: a pure function of (seed, H, W)."""
        u = hash_uniforms(seed, 2 * TRIES + 3)
        return rrc_box(u, h, w, self.cfg.scale, self.cfg.ratio), bool(self.cfg.flip and u[2 * TRIES + 2] < 0.5)

    def crop_uint8(self, img: EncodedImage | np.ndarray, seed: int = 0) -> torch.Tensor:
        """The view before normalisation (and lighting): (3, size, size) uint8."""
        cfg = self.cfg
        fast = cfg.decode_gap if cfg.fast_decode else None
        if self.kind == "test":
            if cfg.eval == "resize":
                return squash(img, self.size, fast)
            return resize_center_crop(img, self.size, cfg.crop_pct, fast)
        if cfg.train == "random_resized_crop":
            box, flip = self.box(*_size(img), seed)
            out = resized_crop(img, box, self.size, fast)
        else:
            out = resize_center_crop(img, self.size, cfg.crop_pct, fast)
            flip = bool(cfg.flip and hash_uniforms(seed, 2 * TRIES + 3)[2 * TRIES + 2] < 0.5)
        if flip:
            out = out.flip(-1)
        if any(cfg.color_jitter):
            out = self._jitter.transform(out, jitter_params(hash_uniforms(seed, JITTER + 8)[JITTER:], cfg.color_jitter))
        if self._ra is not None:
            hwc = np.ascontiguousarray(out.permute(1, 2, 0).numpy())  # no copy from the channels-last resize
            rng = np.random.default_rng(mix_seed(seed, 1))
            out = _chw(self._ra.randaugment(hwc, rng))
        return out

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> contiguous float32 (x / 255 - mean) / std."""
        return x.contiguous().to(torch.float32).mul_(self._inv).add_(self._bias)

    def deferred(self) -> bool:
        """Whether the view can leave the worker as uint8 and be normalised on the batch, on the device (`finish`):
        a quarter of the bytes through the loader and to the accelerator, and no float work in the worker. Not
        with `lighting` (its shift is added on the float scale, per sample)."""
        return not (self.kind != "test" and self.cfg.lighting > 0)

    def _host_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inv, self._bias  # `finish` (Transform's) normalises deferred batches with these

    def __call__(self, img: EncodedImage | np.ndarray, seed: int = 0) -> torch.Tensor:
        x = self.normalize(self.crop_uint8(img, seed))
        if self.kind != "test" and self.cfg.lighting > 0:  # on the 0..1 scale before the normalisation
            shift = lighting_shift(hash_uniforms(seed, LIGHT + 6)[LIGHT:], self.cfg.lighting)
            x += (shift / torch.tensor(self.std)).view(3, 1, 1)
        return x

    def __repr__(self) -> str:
        c = self.cfg
        what = (c.eval if self.kind == "test" else c.train) + ("+randaugment" if self._ra is not None else "")
        return f"CropTransform({self.kind}: {what}, size={self.size}, fast_decode={c.fast_decode})"


def build_crop_transform(kind: str, bundle, cfg: TransformConfig, strong: StrongAugConfig) -> CropTransform:
    return CropTransform(bundle.mean, bundle.std, cfg, bundle.image_size, kind, strong if kind == "strong" else None)
