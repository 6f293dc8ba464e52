"""Fidelity and speed of the device (batched) augmentation against the host (PIL-exact) one, on real CIFAR images.

Per RandAugment op, on the same images and magnitudes: mean and max absolute difference in gray levels of the
device op against the host op and against PIL itself, and the share of pixels that differ; then the whole weak
and strong views on the same draws; then images/s of the host transform (one image at a time, as a DataLoader
worker runs it) against the device transform (the whole batch at once) on this machine's device.

    python benchmarks/augment_fidelity.py [--images 1000] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, whatever is installed

from ssl_kd.data import DataConfig, DatasetBundle, ImageSet, build_transform, to_device_transform  # noqa: E402
from ssl_kd.data import device_augment as D  # noqa: E402
from ssl_kd.data.augment import RANDAUGMENT_OPS  # noqa: E402


def pil_op(name: str, img: np.ndarray, v: float) -> np.ndarray:
    im = Image.fromarray(img)
    w, h = im.size
    affine = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0), "TranslateX": (1, 0, v * w, 0, 1, 0),
              "TranslateY": (1, 0, 0, 0, 1, v * h)}  # fmt: skip
    enhance = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color,
               "Contrast": ImageEnhance.Contrast, "Sharpness": ImageEnhance.Sharpness}  # fmt: skip
    if name in affine:
        return np.asarray(im.transform(im.size, Image.AFFINE, affine[name]))
    if name in enhance:
        return np.asarray(enhance[name](im).enhance(v))
    return np.asarray({
        "AutoContrast": lambda: ImageOps.autocontrast(im), "Equalize": lambda: ImageOps.equalize(im),
        "Identity": lambda: im, "Posterize": lambda: ImageOps.posterize(im, max(1, int(v))),
        "Solarize": lambda: ImageOps.solarize(im, v), "Rotate": lambda: im.rotate(v),
    }[name]())  # fmt: skip


def stats(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return f"{d.mean():8.4f} {d.max():4d} {100 * (d.max(-1) > 0).mean():8.3f}%"


class Draws:
    def __init__(self, u: np.ndarray) -> None:
        self.u, self.i = u, 0

    def random(self, n: int) -> np.ndarray:
        self.i += n
        return self.u[self.i - n : self.i]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=448, help="images per device call in the speed test")
    args = ap.parse_args()
    path = Path(args.data_root) / "cifar10.npz"
    if not path.exists():
        print(f"needs {path} (set --data-root or SSL_KD_DATA)", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    x = np.load(path)["x_test"][: args.images]
    xd = torch.from_numpy(x).to(dev).permute(0, 3, 1, 2).float()
    rng = np.random.default_rng(0)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{len(x)} real CIFAR-10 test images, device {dev} ({name}), torch {torch.__version__}")
    print(f"{'op':<13}{'vs host op: mean':>18}{'max':>5}{'pixels':>10}   {'vs PIL: mean':>14}{'max':>5}{'pixels':>10}")
    for name, (op, lo, hi) in RANDAUGMENT_OPS.items():
        v = lo + (hi - lo) * rng.random(len(x))
        out = D.apply_op(xd, name, torch.from_numpy(v).to(dev)).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        host = np.stack([op(x[i], v[i]) for i in range(len(x))])
        pil = np.stack([pil_op(name, x[i], v[i]) for i in range(len(x))])
        print(f"{name:<13}{stats(out, host):>33}   {stats(out, pil):>29}")

    bundle = DatasetBundle("cifar10", ImageSet(x, np.zeros(len(x))), ImageSet(x, np.zeros(len(x))), 10, 32,
                           (0.491, 0.482, 0.447), (0.247, 0.244, 0.262))  # fmt: skip
    print("\nwhole views on the same draws (normalized floats; max abs difference, in gray levels):")
    for label, kind, aug in [
        ("weak (TorchSSL/USB)", "weak", {}),
        ("strong (TorchSSL/USB)", "strong", {}),
        ("strong (FullMatch)", "strong", {"weak": {"pad_mode": "constant"}, "strong": {
            "num_ops": 2, "op_prob": 0.5, "cutout_random_size": False, "cutout_fill": [127, 127, 127]}}),
    ]:  # fmt: skip
        host_t = build_transform(kind, bundle, DataConfig(augment=aug).augment)
        dev_t = to_device_transform(host_t)
        u = rng.random((len(x), dev_t.num_draws))
        out = dev_t(torch.from_numpy(x).to(dev).permute(0, 3, 1, 2), torch.from_numpy(u).to(dev)).cpu()
        ref = []
        for i in range(len(x)):
            d = Draws(u[i])
            img = host_t.geometric(x[i], d) if kind == "weak" else host_t.randaugment(host_t.geometric(x[i], d), d)
            ref.append(host_t.to_tensor(img))
        diff = (out - torch.stack(ref)).abs() / torch.tensor(host_t._scale).view(1, 3, 1, 1)  # back to gray levels
        differing = 100 * (diff.amax((1, 2, 3)) > 0.5).float().mean()
        print(f"  {label:<24} max {diff.max().item():.4f}, images differing {differing:.2f}%")

    print(f"\nspeed, strong view (TorchSSL/USB), batch {args.batch}:")
    host_t = build_transform("strong", bundle)
    dev_t = to_device_transform(host_t)
    n = min(args.batch, len(x))
    t0 = time.perf_counter()
    for i in range(n):
        host_t(x[i], i)
    host_rate = n / (time.perf_counter() - t0)
    batch = torch.from_numpy(x[:n]).to(dev).permute(0, 3, 1, 2).contiguous()
    u = torch.from_numpy(rng.random((n, dev_t.num_draws))).to(dev)
    dev_t(batch, u)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    reps = 20 if dev.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        dev_t(batch, u)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dev_rate = reps * n / (time.perf_counter() - t0)
    print(f"  host, one image at a time (one worker): {host_rate:10.0f} images/s")
    ratio = dev_rate / host_rate
    print(f"  device, whole batch on {dev.type}:{'':>10}{dev_rate:10.0f} images/s  ({ratio:.1f}x one worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
