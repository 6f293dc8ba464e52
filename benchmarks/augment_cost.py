"""Cost of the device augmentation per batch: the fused op-family RandAugment (ssl_kd/data/device_augment.py) against
the per-op implementation it replaced, side by side in one run, on the same images and draws.

Per variant (weak, strong TorchSSL, strong FullMatch: the `augment:` blocks of configs/_base_/ssl/augment_*.yaml):
milliseconds per batch (median of --repeats calls; torch.cuda.synchronize around each on CUDA), aten ops per batch
(views left out; counted with a TorchDispatchMode), and whether the two outputs are equal bit for bit. On CUDA with
--graph, also the view creation (gather + augmentation + normalisation) replayed from a CUDA graph
(ssl_kd/data/device_dataset.py: CapturedViews) against the same eagerly, and whether captured, eager and the CPU run
of the same code give the same bits. The replaced implementation is the transcription held by
tests/unit/test_device_augment_fused.py (OldWeak / OldStrong), so the ratio is measured in one process.

    python benchmarks/augment_cost.py [--device cuda] [--graph] [--batch 448] [--repeats 20] [--out FILE]

Exit status 1 if any output differs.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, whatever is installed
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from helpers import real_data_root  # noqa: E402
from test_device_augment_fused import OldStrong, OldWeak, OpLog  # noqa: E402

from ssl_kd.data import device_augment as D  # noqa: E402
from ssl_kd.data.config import AugmentConfig  # noqa: E402
from ssl_kd.data.device_dataset import CapturedViews, make_views  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def augment_block(name: str) -> AugmentConfig:
    with open(ROOT / "configs" / "_base_" / "ssl" / f"augment_{name}.yaml") as f:
        return AugmentConfig(**yaml.safe_load(f)["data"]["augment"])


def variants() -> dict[str, tuple[D.DeviceTransform, D.DeviceTransform]]:
    """name -> (new, old) transforms."""
    torchssl, fullmatch = augment_block("torchssl"), augment_block("fullmatch")
    return {
        "weak (TorchSSL)": (D.DeviceWeak(MEAN, STD, torchssl.weak), OldWeak(MEAN, STD, torchssl.weak)),
        "strong TorchSSL": (
            D.DeviceStrong(MEAN, STD, torchssl.weak, torchssl.strong),
            OldStrong(MEAN, STD, torchssl.weak, torchssl.strong),
        ),
        "strong FullMatch": (
            D.DeviceStrong(MEAN, STD, fullmatch.weak, fullmatch.strong),
            OldStrong(MEAN, STD, fullmatch.weak, fullmatch.strong),
        ),
    }


def images(n: int) -> tuple[torch.Tensor, str]:
    root = real_data_root("cifar10.npz")
    if root is None:
        rng = np.random.default_rng(0)
        return torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)), "random 32x32 images"
    with np.load(root / "cifar10.npz") as f:
        x = f["x_test"]
    x = np.concatenate([x] * (n // len(x) + 1))[:n]
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), "real CIFAR-10 test images"


def timed(fn, repeats: int, cuda: bool) -> float:
    """Median milliseconds of fn() over `repeats` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def ops(t: D.DeviceTransform, x: torch.Tensor, u: torch.Tensor) -> int:
    t(x, u)
    with OpLog() as log:
        t(x, u)
    return len(log.ops)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=448, help="images per batch (FixMatch CIFAR: 7 x 64 unlabelled)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    ap.add_argument("--graph", action="store_true", help="CUDA: also the captured-graph view creation")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    x_host, source = images(args.batch)
    x = x_host.to(dev)
    rng = np.random.default_rng(1)
    name = torch.cuda.get_device_name(dev) if cuda else platform.processor() or platform.machine()
    out = io.StringIO()

    def say(line: str = "") -> None:
        print(line)
        out.write(line + "\n")

    say(f"benchmarks/augment_cost.py on {dev} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU "
        f"threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    say(f"{args.batch} {source} per batch; ms = median of {args.repeats} calls; ops = aten ops per batch, views left "
        "out; old = the per-op implementation (ssl_kd@54cd557), new = the op families")  # fmt: skip
    say()
    say(f"{'variant':<18} {'old ms':>9} {'new ms':>9} {'ratio':>6} {'old ops':>8} {'new ops':>8}  bit-equal")
    failed = False
    for label, (new, old) in variants().items():
        u_host = torch.from_numpy(rng.random((args.batch, new.num_draws)))
        u = u_host.to(dev)
        same = torch.equal(new(x, u), old(x, u))
        failed |= not same
        t_old = timed(lambda: old(x, u), args.repeats, cuda)  # noqa: B023 - called in this iteration
        t_new = timed(lambda: new(x, u), args.repeats, cuda)  # noqa: B023
        say(f"{label:<18} {t_old:9.2f} {t_new:9.2f} {t_old / t_new:5.1f}x {ops(old, x, u):8d} {ops(new, x, u):8d}  "
            f"{'yes' if same else 'NO'}")  # fmt: skip
        if cuda and args.graph:
            views = {"v": new}
            idx = torch.arange(args.batch, device=dev)
            eager = make_views(x, views, idx, u)["v"]
            cap = CapturedViews.capture(x, views, args.batch)
            cpu = make_views(x_host, views, idx.cpu(), u_host)["v"]
            if cap is None:
                say(f"{'':<18} graph: capture failed (see the log); eager only")
                failed = True
                continue
            replayed = cap(idx, u)["v"]
            same_graph, same_cpu = torch.equal(replayed, eager), torch.equal(eager.cpu(), cpu)
            failed |= not (same_graph and same_cpu)
            t_eager = timed(lambda: make_views(x, views, idx, u), args.repeats, cuda)  # noqa: B023
            t_graph = timed(lambda: cap(idx, u), args.repeats, cuda)  # noqa: B023
            verdict = f"graph == eager: {'yes' if same_graph else 'NO'}, CUDA == CPU: {'yes' if same_cpu else 'NO'}"
            speed = f"views eager {t_eager:.3f} ms, CUDA graph {t_graph:.3f} ms ({t_eager / t_graph:.1f}x)"
            say(f"{'':<18} {speed}; {verdict}")
    if cuda and not args.graph:
        say("(add --graph for the captured-graph timings and the CUDA == CPU check)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(out.getvalue())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
