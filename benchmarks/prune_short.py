"""Unpruned vs SFP vs ASRFP vs GHFP on real CIFAR-10 with the same short budget, at the same FLOPs reduction.

Every run trains resnet20 from the same initial weights on the same data order for the same number of steps
(SGD 0.1 Nesterov, wd 5e-4, cosine, flip + crop). The pruning methods keep 60% of the filters of every conv but the
downsample ones (one FLOPs reduction for all: the keep ratio fixes the exported shape), recompute their masks
every "epoch" (`--spe` steps) and end with an `export` stage that builds the physically smaller network and
evaluates it; SFP runs once more with `mask_bn: true` (its pruned filters' BN zeroed too, so they cannot regrow).
One more run trains that small shape from scratch (the usual "is pruning better than a small dense network?"
control). Prints one table: test top-1 on the full test split (of the exported network for the pruned runs),
params, FLOPs (torch.utils.flop_counter.FlopCounterMode) and measured inference images/s of each network next to
the unpruned one (eval mode, no grad, batch 256, interleaved rounds, median). CPU-sized by default, but 7 runs:
4-15 min each on 2 shared cores with 1 thread (~1 h in all; `--out DIR --reuse` keeps finished runs across
calls); on a GPU: --arch resnet56 --steps 40000 --spe 390 --batch 128 --threads 8.

    python benchmarks/prune_short.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, whatever is installed


def config(args: argparse.Namespace, model: dict, prune: dict | None) -> dict:
    train = {
        "type": "supervised", "train": ["net"], "epochs": args.steps // args.spe, "steps_per_epoch": args.spe,
        "batch_size": args.batch,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "scheduler": {"name": "cosine", "interval": "step"},
        "eval": {"every": args.steps // args.spe, "batch_size": 500}, "checkpoint": {"every": 10**6},
    }  # fmt: skip
    stages = {"train": train}
    if prune is not None:
        train["prune"] = prune
        stages["export"] = {"type": "export", "uses": ["net"], "eval": {"batch_size": 500}}
    return {
        "experiment": {"seed": args.seed, "logger": {"progress": False, "log_every": 50}},
        "data": {
            "dataset": "cifar10", "root": args.data_root, "num_workers": args.workers,
            "augment": {"weak": {"flip": True, "crop_padding": 4, "pad_mode": "constant"}},
        },
        "models": {"net": model},
        "stages": stages,
    }  # fmt: skip


def run(cfg: dict, folder: Path, reuse: bool) -> tuple[float, float | None, dict]:
    """Run one config; return (test top-1 of its last stage's model, wall seconds, that model's file). With `reuse`,
    a folder that already holds a finished run of the same config is read instead (CPU runs are deterministic);
    its wall time is then unknown (None)."""
    from ssl_kd.run import main

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.yaml"
    text = yaml.safe_dump(cfg, sort_keys=False)
    done = (folder / "run" / "checkpoints" / "last.pt").exists() and path.exists() and path.read_text() == text
    if done and reuse:
        ckpt = torch.load(folder / "run" / "checkpoints" / "last.pt", weights_only=True)
        done = ckpt["stage_index"] == len(cfg["stages"])
    seconds = None
    if not (done and reuse):
        if (folder / "run").exists():
            shutil.rmtree(folder / "run")
        path.write_text(text)
        t0 = time.perf_counter()
        if main([str(path), f"experiment.output_dir={folder / 'run'}"]) != 0:
            raise SystemExit(f"run failed: {path}")
        seconds = time.perf_counter() - t0
    results = torch.load(folder / "run" / "checkpoints" / "last.pt", weights_only=True)["results"]
    stage, res = list(results.items())[-1]
    weights = torch.load(folder / "run" / "checkpoints" / stage / "last.pt", weights_only=True)
    return res["last"]["net/top1"], seconds, weights


@torch.no_grad()
def throughput(models: dict[str, torch.nn.Module], batch: int, rounds: int) -> dict[str, float]:
    """Images/s of each model, measured side by side: every round times each model once (after a warm-up)."""
    x = torch.randn(batch, 3, 32, 32)
    times: dict[str, list[float]] = {n: [] for n in models}
    for m in models.values():
        m.eval()(x)
    for _ in range(rounds):
        for n, m in models.items():
            t0 = time.perf_counter()
            m(x)
            times[n].append(time.perf_counter() - t0)
    return {n: batch / statistics.median(t) for n, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--keep", type=float, default=0.6, help="keep ratio of every pruned conv")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--spe", type=int, default=40, help="steps per epoch: the mask refresh period")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU)")
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds for images/s")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    ap.add_argument("--reuse", action="store_true", help="read finished runs of the same config in --out")
    args = ap.parse_args()
    if not (Path(args.data_root) / "cifar10.npz").exists():
        print(f"needs {args.data_root}/cifar10.npz (set --data-root or SSL_KD_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="prune_short_"))

    from ssl_kd.models import create_model, create_model_from_spec
    from ssl_kd.prune import count_flops, count_params

    torch.manual_seed(args.seed)
    init_file = out / "init.pt"
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"models": {"net": create_model(args.arch, 10).state_dict()}}, init_file)
    same_init = {"arch": args.arch, "checkpoint": str(init_file)}
    r = args.keep
    methods = {
        "unpruned": None,
        "SFP": {"method": "sfp", "keep_ratio": r},
        "ASRFP": {"method": "asrfp", "keep_ratio": r, "decay": 1.0, "sigma": 1e-3, "decay_off_from": 0.8},
        "GHFP": {"method": "ghfp", "keep_ratio": r, "hard_ramp": "cubic", "hard_full_from": 0.9},
        # the zeroing methods leave a pruned filter's BN alone (he-y's SFP); with it masked too, nothing regrows
        "SFP, BN masked": {"method": "sfp", "keep_ratio": r, "mask_bn": True},
    }
    rows, nets = [], {}
    for i, (name, prune) in enumerate(methods.items()):
        print(f"== {name}: {args.arch}, {args.steps} steps", flush=True)
        top1, seconds, weights = run(config(args, same_init, prune), out / f"run_{i}", args.reuse)
        net = create_model_from_spec(weights["specs"]["net"])
        net.load_state_dict(weights["models"]["net"])
        rows.append((name, top1, seconds))
        nets[name] = net
    channels = nets["SFP"].spec["kwargs"]["channels"]
    print(f"== small dense (SFP's exported shape) from scratch: {args.steps} steps", flush=True)
    scratch = {"arch": args.arch, "kwargs": {"channels": channels}}
    top1, seconds, weights = run(config(args, scratch, None), out / "run_scratch", args.reuse)
    rows.append(("small from scratch", top1, seconds))
    nets["small from scratch"] = create_model_from_spec(weights["specs"]["net"])

    speed = throughput(nets, 256, args.rounds)
    base_flops, base_params = count_flops(nets["unpruned"]), count_params(nets["unpruned"])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"\nCIFAR-10 (train stream, full test split); {args.arch}; {args.steps} steps of batch {args.batch} "
          f"(masks every {args.spe} steps); keep ratio {r}; seed {args.seed}; {device}\n")  # fmt: skip
    print(f"| {'run':<18} | {'top-1 %':>7} | {'params':>8} | {'MFLOPs':>7} | {'FLOPs kept':>10} "
          f"| {'img/s':>6} | {'speed-up':>8} | {'train s':>7} |")  # fmt: skip
    print(f"|{'-' * 20}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 12}|{'-' * 8}|{'-' * 10}|{'-' * 9}|")
    for name, top1, seconds in rows:
        f, p = count_flops(nets[name]), count_params(nets[name])
        print(
            f"| {name:<18} | {100 * top1:7.2f} | {p:8,} | {f / 1e6:7.1f} | {100 * f / base_flops:9.1f}% "
            f"| {speed[name]:6.0f} | {speed[name] / speed['unpruned']:7.2f}x | "
            + (f"{seconds:7.0f} |" if seconds is not None else " reused |")
        )
    print(f"\n(params of the unpruned network: {base_params:,}; run folders: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
