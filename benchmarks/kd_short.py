"""KD vs DKD vs KD+DOT on real CIFAR, next to the student trained alone, with the same short budget.

One teacher is trained first; then four single-stage runs train the same student architecture from the same
initial weights, on the same data order, for the same number of steps: alone (CE), KD (tau 4, 0.1 CE + 0.9 KD),
DKD (alpha 1, beta 2 as mdistiller's small-ResNet pairs, CE 1, warm-up 1 epoch), and KD with the DOT optimizer
(momentum 0.9 -/+ 0.075). Prints a table of test top-1 on the full test split. CPU-sized by default (~10 min on
2 cores); on a GPU give bigger models and budgets.

    python benchmarks/kd_short.py                                    # CIFAR-10, resnet20 -> resnet8
    python benchmarks/kd_short.py --dataset cifar100 --teacher resnet32x4 --student resnet8x4 \\
        --limit-train 50000 --teacher-steps 20000 --student-steps 20000 --workers 8     # GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]


def base_config(args: argparse.Namespace) -> dict:
    return {
        "experiment": {"seed": args.seed, "logger": {"progress": False, "log_every": 100}},
        "data": {
            "dataset": args.dataset, "root": args.data_root, "limit_train": args.limit_train,
            "num_workers": args.workers, "augment": {"weak": {"flip": True, "crop_padding": 4, "pad_mode": "constant"}},
        },
    }  # fmt: skip


def stage(kind: str, steps: int, **extra) -> dict:
    """mdistiller's optimizer (SGD 0.9, lr 0.05, wd 5e-4) with a cosine schedule over the short budget."""
    return {
        "type": kind, "iters": steps, "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "scheduler": {"name": "cosine", "interval": "step"},
        "eval": {"batch_size": 500}, "checkpoint": {"every": steps, "unit": "steps"}, **extra,
    }  # fmt: skip


def run(cfg: dict, folder: Path) -> tuple[float, float]:
    """Run one config; return (final test top-1 of its last stage's model, wall seconds)."""
    from ssl_kd.run import main

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    if main([str(path), f"experiment.output_dir={folder / 'run'}"]) != 0:
        raise SystemExit(f"run failed: {path}")
    seconds = time.perf_counter() - t0
    results = torch.load(folder / "run" / "checkpoints" / "last.pt", weights_only=True)["results"]
    last = list(results.values())[-1]["last"]
    return next(v for k, v in last.items() if k.endswith("/top1")), seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    ap.add_argument("--limit-train", type=int, default=20000, help="class-balanced train subset")
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--teacher-steps", type=int, default=2000)
    ap.add_argument("--student-steps", type=int, default=1200)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    args = ap.parse_args()
    if not (Path(args.data_root) / f"{args.dataset}.npz").exists():
        print(f"needs {args.data_root}/{args.dataset}.npz (set --data-root or SSL_KD_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    out = Path(args.out or tempfile.mkdtemp(prefix="kd_short_"))

    from ssl_kd.models import create_model

    # 1) the teacher
    teacher_cfg = {**base_config(args), "models": {"teacher": {"arch": args.teacher}},
                   "stages": {"teacher": stage("supervised", args.teacher_steps, train=["teacher"])}}  # fmt: skip
    print(f"== teacher {args.teacher}: {args.teacher_steps} steps", flush=True)
    teacher_top1, teacher_s = run(teacher_cfg, out / "teacher")
    teacher_file = out / "teacher" / "run" / "checkpoints" / "teacher" / "last.pt"

    # 2) one student initialisation shared by every method
    torch.manual_seed(args.seed)
    classes = 100 if args.dataset == "cifar100" else 10
    init_file = out / "student_init.pt"
    torch.save({"models": {"student": create_model(args.student, classes).state_dict()}}, init_file)

    warmup = max(1, round(args.student_steps * 64 / args.limit_train * 20 / 240))  # mdistiller's 20 of 240 epochs
    kd = {"uses": ["teacher"], "loss": "kd", "temperature": 4.0, "loss_weights": {"ce": 0.1, "kd": 0.9}}
    methods = {
        "alone (CE)": stage("supervised", args.student_steps),
        "KD": stage("kd", args.student_steps, **kd),
        "DKD": stage("kd", args.student_steps, uses=["teacher"], loss="dkd", loss_weights={"ce": 1.0, "kd": 1.0},
                     dkd={"alpha": 1.0, "beta": 2.0, "warmup_epochs": warmup}),
        "KD+DOT": {**stage("kd", args.student_steps, **kd),
                   "optimizer": {"name": "dot", "lr": 0.05, "momentum": 0.9, "delta": 0.075, "weight_decay": 5e-4}},
    }  # fmt: skip
    rows = []
    for i, (name, st) in enumerate(methods.items()):
        models = {"student": {"arch": args.student, "checkpoint": str(init_file)}}
        if "uses" in st:
            models["teacher"] = {"arch": args.teacher, "checkpoint": str(teacher_file)}
        cfg = {**base_config(args), "models": models, "stages": {"student": {**st, "train": ["student"]}}}
        print(f"== student {args.student}, {name}: {args.student_steps} steps", flush=True)
        top1, seconds = run(cfg, out / f"student_{i}")
        rows.append((name, top1, seconds))

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.dataset.upper()}: {args.limit_train} train images, full test split; seed {args.seed}; {device}")
    print(f"teacher {args.teacher}: {args.teacher_steps} steps, top-1 {100 * teacher_top1:.2f}% ({teacher_s:.0f} s)")
    print(f"student {args.student}: {args.student_steps} steps each (batch 64), same init and data order\n")
    print(f"| {'method':<11} | {'top-1 %':>7} | {'vs alone':>8} | {'time s':>6} |")
    print(f"|{'-' * 13}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    alone = rows[0][1]
    for name, top1, seconds in rows:
        print(f"| {name:<11} | {100 * top1:7.2f} | {100 * (top1 - alone):+8.2f} | {seconds:6.0f} |")
    print(f"\nrun folders: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
