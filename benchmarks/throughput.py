"""Throughput of the FullMatch step (WRN-28-2, reference batch 64 labelled + 2 x 448 unlabelled views), side by side.

In one run, on one device: the ssl_kd runner end to end with the host data path (per-image augmentation in
DataLoader workers, the reference-exact default) and with the device data path (`data.pipeline: device`), the host
pipeline alone (loaders only) and the compute alone (one batch, step repeated), and, when `semilearn` is
importable, USB's FixMatch as USB trains it (benchmarks/usb_fixmatch.py, in a subprocess). For each: it/s,
images/s (960 per step), the time 2^20 iterations would take, the GPU's busy share while timing (nvidia-smi /
pynvml samples, when available), and the ratio to USB.

    python benchmarks/throughput.py                                      # CPU: says so, prints CPU numbers
    python benchmarks/throughput.py --precision bf16 --channels-last    # GPU machine
    python benchmarks/throughput.py --precision bf16 --compile default --sync-debug
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, whatever is installed
IMAGES_PER_STEP = 64 + 2 * 448


def make_npz(root: Path, data_root: Path) -> tuple[Path, str]:
    shared = data_root / "cifar10.npz"
    if shared.exists():
        return shared, "real CIFAR-10"
    rng = np.random.default_rng(0)
    path = root / "cifar_like.npz"
    y = np.repeat(np.arange(10), 500)
    np.savez(path, x_train=rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), y_test=y[:100])  # fmt: skip
    return path, "random CIFAR-shaped images"


class GpuBusy:
    """Samples the GPU's utilisation (nvidia-smi or pynvml) every 0.2 s between start() and stop()."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def read() -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i",
                                  "0"], capture_output=True, text=True)  # fmt: skip
            try:
                return float(out.stdout.strip().splitlines()[0])
            except (ValueError, IndexError):
                return None
        return None

    def start(self) -> None:
        if not torch.cuda.is_available() or self.read() is None:
            return

        def loop() -> None:
            while not self._stop.wait(0.2):
                v = self.read()
                if v is not None:
                    self.samples.append(v)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return float(np.mean(self.samples)) if self.samples else None


def config(args, npz: Path, pipeline: str, iters: int) -> dict:
    from ssl_kd.config import load_yaml

    raw = load_yaml(ROOT / "configs" / "fullmatch_cifar10_40.yaml")
    raw["data"].update({"dataset": "npz", "path": str(npz), "num_workers": args.workers, "limit_test": 100,
                        "pipeline": pipeline})  # fmt: skip
    raw["models"]["net"]["arch"] = args.arch
    st = raw["stages"]["fullmatch"]
    st.update({"iters": iters, "batch_size": args.batch, "uratio": args.uratio})
    st["eval"]["every"] = 10**9
    st["checkpoint"]["every"] = 10**9
    raw["experiment"] = {"name": "throughput", "precision": args.precision, "logger": {"progress": False},
                         "channels_last": args.channels_last, "compile": args.compile}  # fmt: skip
    return raw


def build(args, raw: dict, out: Path, extra=()):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import ssl_kd.stages  # noqa: F401  (registers the stage types)
    from ssl_kd.config import resolved_dict, validate_config
    from ssl_kd.engine import RunDir
    from ssl_kd.run import make_runner

    cfg = validate_config(raw)
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision=args.precision, cpu=not torch.cuda.is_available())
    return make_runner(cfg, RunDir(out), resolved_dict(cfg), acc, extra=extra)


def end_to_end(args, npz: Path, pipeline: str, out: Path) -> dict:
    """The runner as `python -m ssl_kd.run` drives it; timed between two synchronised points, nothing per step."""
    from ssl_kd.engine import Callback

    warm, n = args.warmup, args.steps
    cuda = torch.cuda.is_available()

    class Clock(Callback):
        order = 10_000

        def __init__(self) -> None:
            self.t0 = self.t1 = 0.0
            self.busy = GpuBusy()
            self.syncs: list[str] = []

        def on_step_end(self, runner, terms) -> None:
            if runner.global_step not in (warm, warm + n):
                return
            if cuda:
                torch.cuda.synchronize()
            if runner.global_step == warm:
                if args.sync_debug and cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                self.busy.start()
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()
                if args.sync_debug and cuda:
                    torch.cuda.set_sync_debug_mode("default")
                self.busy_pct = self.busy.stop()

    clock = Clock()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(args, config(args, npz, pipeline, warm + n), out, extra=[clock]).run()
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    s = (clock.t1 - clock.t0) / n
    return {"s": s, "busy": getattr(clock, "busy_pct", None), "syncs": syncs}


def data_and_compute(args, npz: Path, out: Path) -> tuple[float, float]:
    """The host pipeline alone (the stage's own loaders) and the compute alone (one batch, the step repeated)."""
    from accelerate.utils import send_to_device

    from ssl_kd.engine.build import build_models
    from ssl_kd.optim import build_optimizer
    from ssl_kd.stages.semi_supervised import FullMatch

    runner = build(args, config(args, npz, "host", args.warmup + args.steps), out)
    dev = runner.device
    runner.models = build_models(runner.cfg, runner.data.num_classes, dev)
    stage = FullMatch("fullmatch", runner.cfg.stages["fullmatch"], runner)
    runner.stage = stage
    stage.setup()
    iters = runner._make_iterators(stage)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0 = time.perf_counter()
        batch = {k: next(it) for k, it in iters.items()}
    data_s = (time.perf_counter() - t0) / args.steps
    for it in iters.values():  # stop the prefetching workers before timing compute on the same cores
        it._shutdown_workers()
    del iters

    net = runner.models["net"].train()
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    stage._prepared.models = {"net": torch.compile(net, mode=args.compile) if args.compile != "no" else net}
    opt = build_optimizer(stage.cfg.optimizer, list(net.named_parameters()))
    batch = send_to_device(batch, dev)
    weights = {k: w for k, w in stage.cfg.loss_weights.items() if w}
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with runner.accelerator.autocast():
            terms, _ = stage.train_step(batch)
        loss = sum(w * terms[k] for k, w in weights.items())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return data_s, (time.perf_counter() - t0) / args.steps


def usb(args) -> dict | None:
    if importlib.util.find_spec("semilearn") is None:
        return None
    cmd = [sys.executable, str(ROOT / "benchmarks" / "usb_fixmatch.py"), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--workers", str(args.workers), "--batch", str(args.batch), "--uratio", str(args.uratio),
           "--data-root", args.data_root] + (["--amp"] if args.precision != "no" else [])  # fmt: skip
    if not torch.cuda.is_available():
        cmd.append("--smoke")
    busy = GpuBusy()
    busy.start()
    res = subprocess.run(cmd, capture_output=True, text=True)
    pct = busy.stop()
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        print(f"USB run failed ({res.returncode}): {res.stderr[-1500:]}", file=sys.stderr)
        return None
    out = json.loads(lines[-1])
    return {"s": 1.0 / out["usb_fixmatch_it_s"], "busy": pct, "syncs": []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="wrn_28_2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--uratio", type=int, default=7)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", default="no", choices=["no", "default", "reduce-overhead", "max-autotune"])
    ap.add_argument("--pipelines", default="host,device", help="comma list of host, device")
    ap.add_argument("--no-usb", action="store_true", help="skip USB even when semilearn is importable")
    ap.add_argument("--sync-debug", action="store_true", help="CUDA: warn on every host sync while timing")
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    args = ap.parse_args()
    imgs = args.batch * (1 + 2 * args.uratio)
    cuda = torch.cuda.is_available()
    dev_name = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, no GPU: CPU numbers)"
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz, source = make_npz(tmp, Path(args.data_root))
        print(f"{args.arch}, batch {args.batch} + 2x{args.batch * args.uratio} = {imgs} images/step, {source}, "
              f"{dev_name}, torch {torch.__version__}, precision {args.precision}, channels_last "
              f"{args.channels_last}, compile {args.compile}, {args.workers} loader workers, "
              f"{torch.get_num_threads()} torch threads", flush=True)  # fmt: skip
        data_s, compute_s = data_and_compute(args, npz, tmp / "parts")
        rows["host pipeline alone"] = {"s": data_s}
        rows["compute alone"] = {"s": compute_s}
        for p in args.pipelines.split(","):
            rows[f"ssl_kd, {p} data path"] = end_to_end(args, npz, p.strip(), tmp / f"e2e_{p}")
        peer = None if args.no_usb else usb(args)
        if peer is not None:
            rows["USB FixMatch (semilearn)"] = peer

    print(f"\n{'':<28}{'s/step':>9}{'it/s':>9}{'images/s':>10}{'2^20 it':>10}{'GPU busy':>10}{'x USB':>7}")
    for name, r in rows.items():
        it_s = 1.0 / r["s"]
        hours = 2**20 / it_s / 3600
        busy = f"{r['busy']:.0f} %" if r.get("busy") is not None else "-"
        ratio = f"{peer['s'] / r['s']:.1f}" if peer is not None else "-"
        print(f"{name:<28}{r['s']:>9.3f}{it_s:>9.2f}{imgs * it_s:>10.0f}{hours:>9.1f}h{busy:>10}{ratio:>7}")
    print(
        f"host data/compute time ratio {data_s / compute_s:.2f} ({'data' if data_s > compute_s else 'compute'}-bound)"
    )
    if peer is None:
        print("USB: not measured (semilearn is not importable here; carry it as wheels to compare)")
    for name, r in rows.items():
        if r.get("syncs"):
            print(f"{name}: {len(r['syncs'])} host syncs while timing, e.g. {r['syncs'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
