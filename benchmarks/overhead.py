"""Runner overhead on CPU: the same model, data pipeline, batch and optimizer stepped by a bare PyTorch loop and by
the ssl_kd runner, interleaved in one process. Prints steps/s of each and the ratio (target: overhead <= 5 %).

    python benchmarks/overhead.py [--model resnet20] [--batch 64] [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("WANDB_MODE", "disabled")


def make_data(root: Path, n_train: int = 4096, n_test: int = 64) -> Path:
    """CIFAR-shaped uint8 data; the real CIFAR-10 from ../shared/data when present (first n images)."""
    shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10.npz"
    if shared.exists():
        from ssl_kd.data import decoded_npz

        d = decoded_npz(shared)
        arrays = {"x_train": d["x_train"][:n_train], "y_train": d["y_train"][:n_train],
                  "x_test": d["x_test"][:n_test], "y_test": d["y_test"][:n_test]}  # fmt: skip
        source = "real CIFAR-10 (first images)"
    else:
        rng = np.random.default_rng(0)
        arrays = {"x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                  "y_train": rng.integers(0, 10, n_train), "x_test": rng.integers(0, 256, (n_test, 32, 32, 3),
                  dtype=np.uint8), "y_test": rng.integers(0, 10, n_test)}  # fmt: skip
        source = "random CIFAR-shaped images"
    path = root / "bench.npz"
    np.savez(path, **arrays)
    return path, source


def bare_loop(npz: Path, arch: str, batch: int, steps: int, warmup: int) -> float:
    """What a user writes by hand: DataLoader -> forward -> CE -> backward -> SGD step."""
    from ssl_kd.data import DataConfig, StreamSampler, ViewDataset, build_transform, load_dataset
    from ssl_kd.models import create_model

    torch.manual_seed(0)
    cfg = DataConfig(dataset="npz", path=str(npz), num_workers=0)
    bundle = load_dataset(cfg)
    ds = ViewDataset(bundle.train, {"x": build_transform("weak", bundle, cfg.augment)})
    loader = torch.utils.data.DataLoader(ds, batch_sampler=StreamSampler(len(ds), batch, seed=0), num_workers=0)
    model = create_model(arch, bundle.num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    it = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        b = next(it)
        loss = F.cross_entropy(model(b["x"]).logits, b["y"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - t0)


def runner_loop(npz: Path, arch: str, batch: int, steps: int, warmup: int, out: Path) -> float:
    """The same work through `python -m ssl_kd.run`'s code path (all stage callbacks on, eval at the end)."""
    from accelerate import Accelerator

    import ssl_kd.stages  # noqa: F401  (registers the stage types)
    from ssl_kd.config import resolved_dict, validate_config
    from ssl_kd.engine import Callback, RunDir
    from ssl_kd.run import make_runner

    class StepClock(Callback):
        order = 10_000

        def __init__(self) -> None:
            self.t: dict[int, float] = {}

        def on_step_end(self, runner, terms) -> None:
            self.t[runner.global_step] = time.perf_counter()

    raw = {
        "experiment": {"name": "overhead", "seed": 0, "logger": {"progress": True, "log_every": 10}},
        "data": {"dataset": "npz", "path": str(npz), "num_workers": 0},
        "models": {"net": {"arch": arch}},
        "stages": {"train": {"type": "supervised", "train": ["net"], "iters": warmup + steps, "batch_size": batch,
                             "optimizer": {"lr": 0.05, "nesterov": True, "weight_decay": 5e-4}}},
    }  # fmt: skip
    cfg = validate_config(raw)
    clock = StepClock()
    make_runner(cfg, RunDir(out), resolved_dict(cfg), Accelerator(cpu=True), extra=[clock]).run()
    return steps / (clock.t[warmup + steps] - clock.t[warmup])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz, source = make_data(tmp)
        print(f"model {args.model}, batch {args.batch}, {args.steps} timed steps x {args.rounds} rounds, "
              f"data: {source}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)  # fmt: skip
        bare, ours = [], []
        for r in range(args.rounds):  # interleaved, so drift in machine speed hits both alike
            bare.append(bare_loop(npz, args.model, args.batch, args.steps, args.warmup))
            ours.append(runner_loop(npz, args.model, args.batch, args.steps, args.warmup, tmp / f"run{r}"))
            print(f"round {r + 1}: bare {bare[-1]:.2f} steps/s, runner {ours[-1]:.2f} steps/s", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"median: bare loop {b:.2f} steps/s | ssl_kd runner {o:.2f} steps/s | "
          f"runner/bare {o / b:.3f} | overhead {100 * (b / o - 1):+.1f} %")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
