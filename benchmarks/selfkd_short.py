"""CE vs Mixup vs CutMix vs RecursiveMix vs MixSKD on real CIFAR-100 with the same short budget, and the images/s
of MixSKD next to CE on the same model.

Every method trains the same CIFAR ResNet-18 (narrow on a CPU) from the same initial weights (the same seed builds
the plain model and the multi-exit model's backbone identically) on the same data order for the same number of
steps: SGD Nesterov 0.9, wd 5e-4, linear warm-up then cosine. Prints test top-1 of the backbone exit on the full
test split (MixSKD: also the best exit, what the reference quotes). Throughput is measured side by side: short
CE and MixSKD runs alternate, and each reports the median time of a training step (loader, forward, backward,
optimizer; evaluation excluded), so both see the same machine load.

    python benchmarks/selfkd_short.py                      # CPU: width 8, batch 32, 2500 steps, 1 torch thread
    python benchmarks/selfkd_short.py --only none --tp-widths 64 --tp-steps 8   # throughput of the reference width
    python benchmarks/selfkd_short.py --width 64 --batch 64 --steps 40000 --threads 16 --workers 8   # GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssl_kd.engine import Callback  # noqa: E402


def base_config(args: argparse.Namespace, limit_test: int | None = None) -> dict:
    data = {
        "dataset": "cifar100", "root": args.data_root, "num_workers": args.workers,
        "augment": {"weak": {"flip": True, "crop_padding": 4, "pad_mode": "constant"}},
    }  # fmt: skip
    if limit_test:
        data["limit_test"] = limit_test
    return {"experiment": {"seed": args.seed, "logger": {"progress": False, "log_every": 50}}, "data": data}


def backbone(args: argparse.Namespace) -> dict:
    return {"width": args.width, "stem_relu": not args.no_stem_relu}


def stage(kind: str, steps: int, args: argparse.Namespace, **extra) -> dict:
    return {
        "type": kind, "train": ["net"], "iters": steps, "batch_size": args.batch,
        "optimizer": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "scheduler": {"name": "cosine", "interval": "step", "warmup": max(1, steps // 20)},
        "eval": {"every": steps, "unit": "steps", "batch_size": 500},
        "checkpoint": {"every": steps, "unit": "steps"}, **extra,
    }  # fmt: skip


def methods(args: argparse.Namespace, steps: int) -> dict[str, tuple[dict, dict]]:
    """name -> (model config, stage config)."""
    plain = {"arch": "cifar_resnet18", "kwargs": backbone(args)}
    multi = {"arch": "multi_exit", "kwargs": {"backbone": "cifar_resnet18", "backbone_kwargs": backbone(args)}}
    return {
        "CE": (plain, stage("supervised", steps, args)),
        "Mixup": (plain, stage("supervised", steps, args, mix={"kind": "mixup", "alpha": 0.4})),
        "CutMix": (plain, stage("supervised", steps, args, mix={"kind": "cutmix", "alpha": 1.0})),
        "RecursiveMix": (plain, stage("recursivemix", steps, args, alpha=0.5, loss_weights={"ce": 1.0, "roi": 0.5})),
        "MixSKD": (multi, stage("mixskd", steps, args, alpha=0.4, temperature=3.0)),
        # ablations, only with --only: RecursiveMix without its RoI term (omega 0: the paste and mixed labels alone),
        # and with the RoI over the transposed box of the superseded commit 6364e11 instead of the pasted one (ed381bf2)
        "RM-omega0": (plain, stage("recursivemix", steps, args, alpha=0.5, loss_weights={"ce": 1.0, "roi": 0.0})),
        "RM-transposedroi": (plain, stage("recursivemix", steps, args, alpha=0.5, roi_box="transposed")),
    }


ABLATIONS = ("RM-omega0", "RM-transposedroi")


class Clock(Callback):
    """Wall time at the end of every step (after the optimizer and the callbacks)."""

    order = 10_000

    def __init__(self) -> None:
        self.t: list[float] = []

    def on_stage_start(self, runner) -> None:
        self.t = [time.perf_counter()]

    def on_step_end(self, runner, terms) -> None:
        self.t.append(time.perf_counter())

    def step_seconds(self, skip: int = 3) -> list[float]:
        """Durations of the steps after the first `skip` (warm-up), without the last (it holds the evaluation)."""
        d = [b - a for a, b in zip(self.t, self.t[1:])]
        return d[skip:-1] if len(d) > skip + 1 else d


def run(cfg: dict, folder: Path) -> tuple[dict, Clock, float]:
    """Run one config; return (its stage result, the step clock, wall seconds)."""
    import ssl_kd.callbacks as callbacks
    from ssl_kd.run import main

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    clock = Clock()
    orig = callbacks.experiment_callbacks
    callbacks.experiment_callbacks = lambda c: [*orig(c), clock]
    t0 = time.perf_counter()
    try:
        if main([str(path), f"experiment.output_dir={folder / 'run'}"]) != 0:
            raise SystemExit(f"run failed: {path}")
    finally:
        callbacks.experiment_callbacks = orig
    seconds = time.perf_counter() - t0
    results = torch.load(folder / "run" / "checkpoints" / "last.pt", weights_only=True)["results"]
    return list(results.values())[-1], clock, seconds


def throughput(args: argparse.Namespace, out: Path, width: int) -> tuple[float, float]:
    """Median step seconds of CE and MixSKD at this width, alternating short runs `args.tp_rounds` times."""
    wide = argparse.Namespace(**{**vars(args), "width": width})
    ms = methods(wide, args.tp_steps)
    times: dict[str, list[float]] = {"CE": [], "MixSKD": []}
    for r in range(args.tp_rounds):
        for name in ("CE", "MixSKD"):
            model, st = ms[name]
            cfg = {**base_config(args, limit_test=100), "models": {"net": model}, "stages": {"s": st}}
            _, clock, _ = run(cfg, out / f"tp_w{width}_{name}_{r}")
            times[name] += clock.step_seconds(skip=2)
    return statistics.median(times["CE"]), statistics.median(times["MixSKD"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--width", type=int, default=8, help="ResNet-18 base width (64 = the reference model)")
    ap.add_argument("--no-stem-relu", action="store_true", help="MixSKD's stem (no ReLU) for every method")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids thrashing on shared cores)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of CE,Mixup,CutMix,RecursiveMix,MixSKD and the ablations "
        "RM-omega0,RM-transposedroi",
    )
    ap.add_argument("--tp-widths", default=None, help="widths for the throughput ratio (default: --width; none)")
    ap.add_argument("--tp-steps", type=int, default=30)
    ap.add_argument("--tp-rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    args = ap.parse_args()
    if not (Path(args.data_root) / "cifar100.npz").exists():
        print(f"needs {args.data_root}/cifar100.npz (set --data-root or SSL_KD_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="selfkd_short_"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} torch thread(s)"

    # 1) throughput, side by side
    widths = [] if args.tp_widths == "none" else [int(w) for w in (args.tp_widths or str(args.width)).split(",")]
    tp = {}
    for w in widths:
        print(f"== throughput, width {w}: CE and MixSKD alternating, {args.tp_rounds} x {args.tp_steps} steps",
              flush=True)  # fmt: skip
        tp[w] = throughput(args, out, w)

    # 2) accuracy at the same budget
    rows = []
    chosen = args.only.split(",") if args.only else [m for m in methods(args, args.steps) if m not in ABLATIONS]
    for name, (model, st) in methods(args, args.steps).items():
        if name not in chosen:
            continue
        print(f"== {name}: {args.steps} steps, batch {args.batch}", flush=True)
        cfg = {**base_config(args), "models": {"net": model}, "stages": {"s": st}}
        res, clock, seconds = run(cfg, out / name)
        last = res["last"]
        step_s = statistics.median(clock.step_seconds())
        rows.append((name, last["net/top1"], last.get("net/max/top1"), step_s, seconds))
        print(f"   top-1 {100 * last['net/top1']:.2f}%  ({seconds:.0f} s)", flush=True)

    if rows:
        print(f"\nCIFAR-100 (../shared/data: 23000 train, full 10000 test); cifar_resnet18 width {args.width}, "
              f"stem ReLU {not args.no_stem_relu}; {args.steps} steps x batch {args.batch}, lr {args.lr} cosine; "
              f"seed {args.seed}; {device}\n")  # fmt: skip
        print(f"| {'method':<12} | {'top-1 % (backbone)':>18} | {'vs CE':>6} | {'best exit %':>11} | {'s/step':>6} | "
              f"{'img/s':>6} | {'time s':>6} |")  # fmt: skip
        print(f"|{'-' * 14}|{'-' * 20}|{'-' * 8}|{'-' * 13}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
        ce = next((r[1] for r in rows if r[0] == "CE"), None)
        for name, top1, best_exit, step_s, seconds in rows:
            vs = f"{100 * (top1 - ce):+6.2f}" if ce is not None else "     -"
            ex = f"{100 * best_exit:11.2f}" if best_exit is not None else f"{'-':>11}"
            print(f"| {name:<12} | {100 * top1:18.2f} | {vs} | {ex} | {step_s:6.3f} | {args.batch / step_s:6.1f} | "
                  f"{seconds:6.0f} |")  # fmt: skip
    if tp:
        print("\nThroughput, measured side by side (median training step; images = the batch of real images, "
              "MixSKD's forward sees twice as many):\n")  # fmt: skip
        print(f"| {'width':>5} | {'CE img/s':>8} | {'MixSKD img/s':>12} | {'MixSKD / CE':>11} |")
        print(f"|{'-' * 7}|{'-' * 10}|{'-' * 14}|{'-' * 13}|")
        for w, (ce_s, mix_s) in tp.items():
            print(f"| {w:>5} | {args.batch / ce_s:8.1f} | {args.batch / mix_s:12.1f} | {ce_s / mix_s:11.3f} |")
    print(f"\nrun folders: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
