"""CE vs CTC (both presets) on real CIFAR-100, with the transfer number from a linear probe on real CIFAR-10.

Three runs of the same model from the same initial weights on the same data, each followed by the same probe:
CE (`supervised`, E epochs), CTC-transferability and CTC-discriminability (`instdisc` for E1 epochs, then `crd`
against a frozen snapshot for E - E1 epochs, refilled memories, as configs/selfkd/ctc_cifar100_resnet18.yaml).
Discriminability = CIFAR-100 test top-1 of the trained model (full test split); transferability = the best
CIFAR-10 test top-1 of a linear probe on the frozen backbone (BN in train mode, as the reference).

The default budget fits a shared 2-core CPU in ~25 minutes: a small CNN (`cnn_small`, width 32), 6,000 CIFAR-100
training images (60 per class of the shared subset), 6 epochs (CTC: 4 + 2), K = 2048 negatives (the reference's
K/N of about 1/3), and a 10-epoch probe on 5,000 CIFAR-10 images. It shows the pipeline end to end and the direction
of the trade-off at this budget; it does not reproduce the paper's 300-epoch ResNeXt numbers. On a GPU:

    python benchmarks/ctc_short.py --arch resnet18 --limit-train 50000 --epochs 300 --stage-two-epoch 200 \\
        --negatives 16384 --probe-epochs 30 --probe-limit 50000 --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, not an installed one
CIFAR100_STATS = {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]}


def base_config(args: argparse.Namespace, init_file: Path) -> dict:
    kwargs = (
        {"width": args.width} if args.arch == "cnn_small" else ({"cifar_stem": True} if args.arch == "resnet18" else {})
    )
    return {
        "experiment": {"seed": args.seed, "logger": {"progress": False, "log_every": 50}},
        "data": {
            "dataset": "cifar100", "root": args.data_root, "limit_train": args.limit_train, "num_workers": args.workers,
            "augment": {"weak": {"flip": True, "crop_padding": 4, "pad_mode": "constant"}},
        },
        "models": {"net": {"arch": args.arch, "kwargs": kwargs, "checkpoint": str(init_file)}},
    }  # fmt: skip


def train_stage(kind: str, epochs: int, lr: float, wd: float, **extra) -> dict:
    return {
        "type": kind, "train": ["net"], "epochs": epochs, "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": wd},
        "scheduler": {"name": "cosine", "interval": "epoch"},
        "eval": {"every": epochs, "batch_size": 500}, "checkpoint": {"every": epochs}, **extra,
    }  # fmt: skip


def probe_stage(args: argparse.Namespace) -> dict:
    """dt-tradeoff transfer.py: SGD lr 0.4, momentum 0.9, wd 5e-4, batch 512, cosine, BN in train mode."""
    return {
        "type": "linear_probe", "uses": ["net"], "bn_mode": "train", "epochs": args.probe_epochs, "batch_size": 512,
        "data": {"dataset": "cifar10", "limit_train": args.probe_limit, "limit_test": args.probe_test,
                 **CIFAR100_STATS},
        "optimizer": {"name": "sgd", "lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4},
        "scheduler": {"name": "cosine", "interval": "epoch"},
        "eval": {"every": args.probe_eval_every, "batch_size": 500}, "checkpoint": {"every": args.probe_epochs},
    }  # fmt: skip


def run(cfg: dict, folder: Path, reuse: bool) -> tuple[dict, float, str]:
    """Train one method (+ probe) in `folder`. With `reuse`, a folder that holds the same config is not trained
    again: a finished run is read back, an interrupted one continues from its last checkpoint (`--resume`, exact).
    Returns (results, seconds, how): the seconds of a reused or resumed run include its earlier part, measured as
    the time from writing its config to its last checkpoint."""
    from ssl_kd.run import main

    folder.mkdir(parents=True, exist_ok=True)
    path, ckpt, timing = folder / "bench.yaml", folder / "run" / "checkpoints" / "last.pt", folder / "seconds.json"
    text = yaml.safe_dump(cfg, sort_keys=False)
    earlier, how = 0.0, "run"
    if reuse and path.exists() and path.read_text() == text and ckpt.exists():
        results = torch.load(ckpt, weights_only=True)["results"]
        earlier = json.loads(timing.read_text()) if timing.exists() else ckpt.stat().st_mtime - path.stat().st_mtime
        if all(name in results for name in cfg["stages"]):
            return results, earlier, "reused"
        how = "resumed"
    else:
        path.write_text(text)
    t0 = time.perf_counter()
    argv = [str(path), f"experiment.output_dir={folder / 'run'}"] + (["--resume"] if how == "resumed" else [])
    if main(argv) != 0:
        raise SystemExit(f"run failed: {path}")
    seconds = earlier + time.perf_counter() - t0
    timing.write_text(json.dumps(seconds))
    return torch.load(ckpt, weights_only=True)["results"], seconds, how


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--arch", default="cnn_small")
    ap.add_argument("--width", type=int, default=32, help="cnn_small width")
    ap.add_argument("--limit-train", type=int, default=6000, help="class-balanced CIFAR-100 train subset")
    ap.add_argument("--epochs", type=int, default=6, help="total epochs (CE; CTC's two stages together)")
    ap.add_argument("--stage-two-epoch", type=int, default=4, help="CTC's E1: stage 1 length")
    ap.add_argument("--negatives", type=int, default=2048, help="K")
    ap.add_argument("--probe-epochs", type=int, default=10)
    ap.add_argument("--probe-eval-every", type=int, default=2)
    ap.add_argument("--probe-limit", type=int, default=5000, help="CIFAR-10 train images for the probe")
    ap.add_argument("--probe-test", type=int, default=5000, help="CIFAR-10 test images for the probe")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    ap.add_argument(
        "--reuse", action="store_true", help="with --out: read back finished runs of the same config, resume others"
    )
    args = ap.parse_args()
    for name in ("cifar100", "cifar10"):
        if not (Path(args.data_root) / f"{name}.npz").exists():
            print(f"needs {args.data_root}/{name}.npz (set --data-root or SSL_KD_DATA)", file=sys.stderr)
            return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="ctc_short_"))
    out.mkdir(parents=True, exist_ok=True)

    from ssl_kd.models import create_model

    torch.manual_seed(args.seed)  # one initialisation shared by every method
    init_file = out / "init.pt"  # the same bytes on every call with the same seed and model
    kwargs = (
        {"width": args.width} if args.arch == "cnn_small" else ({"cifar_stem": True} if args.arch == "resnet18" else {})
    )
    torch.save({"models": {"net": create_model(args.arch, 100, **kwargs).state_dict()}}, init_file)

    e1, e2 = args.stage_two_epoch, args.epochs - args.stage_two_epoch
    methods = {"CE": {"train": train_stage("supervised", args.epochs, 0.05, 5e-4)}}
    for preset in ("transferability", "discriminability"):
        methods[f"CTC-{preset[:5]}."] = {
            "instance": train_stage("instdisc", e1, 0.05, 1e-3, preset=preset),
            "contrast": train_stage("crd", e2, 0.005, 5e-4, preset=preset, uses=["net_t0"],
                                    snapshot={"of": "net", "as": "net_t0"}, num_negatives=args.negatives),
        }  # fmt: skip
    rows = []
    for i, (name, stages) in enumerate(methods.items()):
        cfg = {**base_config(args, init_file), "stages": {**stages, "probe": probe_stage(args)}}
        print(f"== {name}: {list(stages)} + probe", flush=True)
        results, seconds, how = run(cfg, out / f"run_{i}", args.reuse)
        trained = results[list(stages)[-1]]
        row = (name, trained["last"]["net/top1"], results["probe"]["best_top1"], results["probe"]["last"]["net/top1"])
        rows.append((*row, seconds, how))
        (out / "results.json").write_text(json.dumps(rows, indent=1))

    threads = torch.get_num_threads()
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores), {threads} threads"
    )
    print(f"\nCIFAR-100 (shared subset) -> CIFAR-10 probe; {args.arch}; seed {args.seed}; {device}")
    print(
        f"train: {args.limit_train} CIFAR-100 images, {args.epochs} epochs (CTC {e1} + {e2}), batch 64, lr 0.05 cosine"
        f" (CTC stage 2: 0.005), K = {args.negatives}; CIFAR-100 top-1 on the full 10,000-image test split"
    )
    print(f"probe: {args.probe_limit} CIFAR-10 train / {args.probe_test} test images, {args.probe_epochs} epochs, "
          f"batch 512, lr 0.4, BN train mode; best and last probe top-1\n")  # fmt: skip
    head = ("method", "CIFAR-100 top-1 %", "CIFAR-10 probe best %", "probe last %", "time s", "run")
    print(f"| {head[0]:<11} | {head[1]:>17} | {head[2]:>21} | {head[3]:>12} | {head[4]:>6} | {head[5]:<7} |")
    print(f"|{'-' * 13}|{'-' * 19}|{'-' * 23}|{'-' * 14}|{'-' * 8}|{'-' * 9}|")
    for name, disc, best, last, seconds, how in rows:
        print(
            f"| {name:<11} | {100 * disc:17.2f} | {100 * best:21.2f} | {100 * last:12.2f} | {seconds:6.0f} | {how:<7} |"
        )
    print(f"\nrun folders: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
