"""USB's FixMatch (the `semilearn` package), timed as USB trains it: its own datasets, PIL RandAugment in DataLoader
workers, WRN-28-2, its train_step and hooks (backward, SGD step, EMA). Prints one JSON line with it/s.

`benchmarks/throughput.py --usb` runs this in a subprocess next to ssl_kd's paths, on the same GPU, in one run.
USB reads CIFAR-10 through torchvision (download=True); offline, the batches are written in torchvision's layout
from `../shared/data/cifar10.npz` and torchvision's md5 check is skipped (the pixels are the same, the pickles
are not byte-identical).

semilearn 0.3.2 imports `aim` and `wandb` at import time, only for its AimHook / WandBHook, which this benchmark
never enables. Where either is missing (a GPU image without them), an empty stand-in module is put in its place
(benchmarks/_usb.py) so that semilearn imports; the output then says "aim / wandb missing: empty stand-ins
installed, USB's loggers are not used". semilearn itself comes from the environment or from `--usb-site DIR`
(`pip install --no-deps --target DIR semilearn==0.3.2`); of its other dependencies the import needs progress,
ruamel.yaml, scikit-image, timm, transformers, torchaudio and tensorboard (nets and datasets this run never uses).

    python benchmarks/usb_fixmatch.py --steps 50 --warmup 10 --workers 8 [--amp] [--usb-site DIR]
    python benchmarks/usb_fixmatch.py --smoke      # a few steps on CPU: checks the adapter, not a speed figure
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _usb  # noqa: E402
from throughput import GpuBusy  # noqa: E402


def write_torchvision_cifar10(npz: Path, root: Path) -> None:
    """cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} from the npz (pixels and labels)."""
    out = root / "cifar10" / "cifar-10-batches-py"
    if (out / "batches.meta").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    d = np.load(npz)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # torchvision reshapes to (N, 3, 32, 32)
        with open(out / name, "wb") as f:
            pickle.dump({"data": flat, "labels": [int(v) for v in y]}, f)

    xs, ys = np.array_split(d["x_train"], 5), np.array_split(d["y_train"], 5)
    for i, (x, y) in enumerate(zip(xs, ys), 1):
        dump(f"data_batch_{i}", x, y)
    dump("test_batch", d["x_test"], d["y_test"])
    with open(out / "batches.meta", "wb") as f:
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        pickle.dump({"label_names": names}, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--uratio", type=int, default=7)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--amp", action="store_true", help="USB's --amp (fp16 autocast + GradScaler)")
    ap.add_argument("--smoke", action="store_true", help="run on the CPU (the adapter check; not a speed figure)")
    ap.add_argument("--usb-site", default=None, help="folder with semilearn 0.3.2 (pip install --no-deps --target)")
    args = ap.parse_args()

    _usb.use_site(args.usb_site)
    note = _usb.standin_message(_usb.install_logger_standins())
    if note:
        print(note, flush=True)
    import torchvision
    from semilearn import get_algorithm, get_config, get_net_builder

    if args.smoke:  # USB moves every batch with .cuda(gpu): keep everything on the CPU instead
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        torch.cuda.set_device = lambda *a, **k: None  # type: ignore[assignment]
    import torchvision.datasets.cifar as tv_cifar

    tv_cifar.check_integrity = lambda *a, **k: True  # offline: pixels from the npz, not the original pickles
    torchvision.datasets.CIFAR10._check_integrity = lambda self: True
    tmp = Path(tempfile.mkdtemp(prefix="usb_"))
    write_torchvision_cifar10(Path(args.data_root) / "cifar10.npz", tmp)
    total = args.warmup + args.steps
    config = {
        "algorithm": "fixmatch", "net": "wrn_28_2", "use_pretrain": False, "dataset": "cifar10", "num_classes": 10,
        "num_labels": 40, "batch_size": args.batch, "uratio": args.uratio, "eval_batch_size": 256,
        "num_workers": args.workers, "data_dir": str(tmp), "save_dir": str(tmp / "saved"), "save_name": "bench",
        "num_train_iter": total + 10, "epoch": 1, "num_eval_iter": 10**9, "num_log_iter": 10**9,
        "amp": args.amp, "gpu": 0, "seed": 0, "lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "ema_m": 0.999,
        "hard_label": True, "T": 0.5, "p_cutoff": 0.95, "ulb_loss_ratio": 1.0, "img_size": 32, "crop_ratio": 0.875,
        "optim": "SGD", "layer_decay": 1.0, "use_cat": True, "distributed": False, "world_size": 1, "rank": 0,
        "multiprocessing_distributed": False,
    }  # fmt: skip
    cfg = get_config(config)
    alg = get_algorithm(cfg, get_net_builder(cfg.net, from_name=False), tb_log=None, logger=None)
    if args.smoke:
        alg.hooks_dict.pop("TimerHook", None)  # CUDA events
    else:
        torch.cuda.set_device(0)
        alg.model = alg.model.cuda(0)
        alg.ema_model = alg.ema_model.cuda(0)
    alg.model.train()
    alg.call_hook("before_run")
    alg.it = 0
    stamps = []
    busy = GpuBusy()
    for data_lb, data_ulb in zip(alg.loader_dict["train_lb"], alg.loader_dict["train_ulb"]):
        if alg.it == total:
            break
        alg.call_hook("before_train_step")
        alg.out_dict, alg.log_dict = alg.train_step(**alg.process_batch(**data_lb, **data_ulb))
        alg.call_hook("after_train_step")
        alg.it += 1
        if not args.smoke:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if alg.it == args.warmup:
            busy.start()
    busy_pct = busy.stop()
    it_s = args.steps / (stamps[-1] - stamps[args.warmup - 1]) if args.warmup else args.steps / (stamps[-1] - stamps[0])
    print(json.dumps({"usb_fixmatch_it_s": it_s, "steps": args.steps, "workers": args.workers, "amp": args.amp,
                      "loss": float(alg.log_dict.get("train/sup_loss", float("nan"))),
                      "gpu_busy": busy_pct, "logger_standins": bool(note)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
