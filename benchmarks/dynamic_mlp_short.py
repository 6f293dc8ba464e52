"""Image-only vs concatenation vs DynamicMLP-C at the same short budget, on (a) the shared plant photos with their
real observation dates and (b) CIFAR-100 with SYNTHETIC class-correlated locations; top-1 per seed.

Every model is the same narrow CIFAR ResNet-18 (the same seed builds the same backbone weights; the heads are built
after it) trained by the `supervised` stage with DynamicMLP's recipe (label-smoothing CE 0.1, mixup alpha 0.4 on
every batch with `meta` mixed by the same lambda and permutation, SGD 0.9, wd 1e-4, linear warm-up then cosine) on
the same data order for the same number of steps. The three differ only in the head on the pooled feature:

    image-only   fc(img)                         (the dates / locations are in the batch but unused)
    concat       fc(concat[img, FCNet(meta)])
    C            fc(img + DynamicMLP-C(img, FCNet(meta)))     (d 256, h 64, N 2, the reference default)

(a) ucsc_plants32: 3,112 train / 775 test real iNaturalist photos, 51 species; metadata = the date only (2-d; the
    file's location is one constant centroid). The date signal is weak (README: month-only classifier 7.4 % vs
    6.3 % majority), so a small or no gain is the expected outcome.
(b) CIFAR-100 (shared 23k-image train subset; test: a class-balanced subset of the 10k test set): metadata =
    SYNTHETIC latitude/longitude, one region per coarse class (20 regions, N(0, spread) degrees around each centre),
    geo only (4-d). Made up so that "metadata helps" is measurable; not a claim about real data.

    nice -n 10 python benchmarks/dynamic_mlp_short.py --only plants &   # CPU: width 8, batch 32, 200 steps, 2 seeds;
    nice -n 10 python benchmarks/dynamic_mlp_short.py --only CIFAR &    # ~28 min per dataset on 2 shared cores
    python benchmarks/dynamic_mlp_short.py --steps 3000 --width 64 --threads 8 --workers 4   # a bigger machine
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
from kd_short import run  # one config -> (last stage's final test top-1, wall seconds)

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("image-only", "concat", "C")


def datasets(args: argparse.Namespace) -> dict[str, dict]:
    """name -> (data block, meta_dim, description)."""
    common = {"root": args.data_root, "num_workers": args.workers,
              "augment": {"weak": {"flip": True, "crop_padding": 4, "pad_mode": "reflect"}}}  # fmt: skip
    return {
        "plants32 (real dates)": dict(
            data={**common, "dataset": "ucsc_plants32", "metadata": {"use": ["temporal"]}}, meta_dim=2,
        ),
        "CIFAR-100 (SYNTHETIC locations)": dict(
            data={**common, "dataset": "cifar100", "limit_test": args.cifar_test,
                  "metadata": {"use": ["geo"], "missing": "used",
                               "synthetic_location": {"by": "coarse", "spread": args.spread}}},
            meta_dim=4,
        ),
    }  # fmt: skip


def model(kind: str, meta_dim: int, args: argparse.Namespace) -> dict:
    m = {"arch": "cifar_resnet18", "kwargs": {"width": args.width}}
    if kind == "concat":
        m["head"] = {"type": "concat", "meta_dim": meta_dim}
    elif kind == "C":
        m["head"] = {"type": "dynamic_mlp", "variant": "c", "meta_dim": meta_dim}
    return m


def stage(args: argparse.Namespace) -> dict:
    return {
        "type": "supervised", "train": ["net"], "iters": args.steps, "batch_size": args.batch,
        "label_smoothing": 0.1, "mix": {"kind": "mixup", "alpha": 0.4},
        "optimizer": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 1e-4},
        "scheduler": {"name": "cosine", "interval": "step", "warmup": max(1, args.steps // 15)},
        "eval": {"every": args.steps, "unit": "steps", "batch_size": 500},
        "checkpoint": {"every": args.steps, "unit": "steps"},
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--width", type=int, default=8, help="CIFAR ResNet-18 base width (64 = the full model)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--spread", type=float, default=10.0, help="synthetic locations: degrees around each centre")
    ap.add_argument("--cifar-test", type=int, default=1000, help="class-balanced CIFAR-100 test images")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids thrashing on shared cores)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--only", default=None, help="run only datasets whose name starts with this (plants, CIFAR)")
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    args = ap.parse_args()
    for f in ("ucsc_plants32.npz", "cifar100.npz"):
        if not (Path(args.data_root) / f).exists():
            print(f"needs {args.data_root}/{f} (set --data-root or SSL_KD_DATA)", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="dynamic_mlp_short_"))
    seeds = [int(s) for s in args.seeds.split(",")]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} torch thread(s)"
    table: dict[tuple[str, str], list[float]] = {}
    secs: dict[tuple[str, str], list[float]] = {}
    t_all = time.perf_counter()
    for dname, d in datasets(args).items():
        if args.only and not dname.lower().startswith(args.only.lower()):
            continue
        for seed in seeds:
            for kind in MODELS:
                cfg = {"experiment": {"seed": seed, "logger": {"progress": False, "log_every": 100}},
                       "data": d["data"], "models": {"net": model(kind, d["meta_dim"], args)},
                       "stages": {"train": stage(args)}}  # fmt: skip
                tag = f"{dname.split()[0]}_{kind}_s{seed}"
                top1, seconds = run(cfg, out / tag)
                table.setdefault((dname, kind), []).append(100 * top1)
                secs.setdefault((dname, kind), []).append(seconds)
                print(f"   {dname:<32} {kind:<10} seed {seed}: top-1 {100 * top1:6.2f}%  ({seconds:.0f} s)", flush=True)

    print(f"\nDynamicMLP short benchmark: cifar_resnet18 width {args.width}; {args.steps} steps x batch {args.batch}, "
          f"SGD lr {args.lr} warm-up + cosine, LS 0.1, mixup 0.4 (meta mixed with the same lambda/permutation); "
          f"seeds {seeds}; {device}; CIFAR-100 test: {args.cifar_test} class-balanced images, plants test: all 775; "
          f"total {time.perf_counter() - t_all:.0f} s\n")  # fmt: skip
    print(f"| {'data (metadata)':<32} | {'model':<10} | " + " | ".join(f"seed {s} top-1 %" for s in seeds)
          + f" | {'mean':>6} | {'vs image-only':>13} | {'s/run':>5} |")  # fmt: skip
    print("|" + "|".join("-" * (w + 2) for w in [32, 10, *[15] * len(seeds), 6, 13, 5]) + "|")
    for (dname, kind), vals in table.items():
        base = statistics.mean(table[(dname, "image-only")]) if (dname, "image-only") in table else None
        mean = statistics.mean(vals)
        vs = f"{mean - base:+13.2f}" if base is not None else f"{'-':>13}"
        print(f"| {dname:<32} | {kind:<10} | " + " | ".join(f"{v:15.2f}" for v in vals)
              + f" | {mean:6.2f} | {vs} | {statistics.mean(secs[(dname, kind)]):5.0f} |")  # fmt: skip
    print(f"\nrun folders: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
