"""Throughput of the FullMatch step (WRN-28-2, reference batch 64 labelled + 2 x 448 unlabelled views).

Three numbers, measured in one process: the data pipeline alone (loaders with augmentation, no model), the
compute alone (one batch on the device, forward + backward + SGD step repeated), and the runner end to end.
Iterations/s and images/s (960 images per step) for each; the ratio tells which side is the bottleneck.

    python benchmarks/throughput.py                   # CPU
    python benchmarks/throughput.py --precision bf16  # on a GPU machine it uses the GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]


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


def build(args, npz: Path, out: Path, iters: int):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import ssl_kd.stages  # noqa: F401  (registers the stage types)
    from ssl_kd.config import load_yaml, resolved_dict, validate_config
    from ssl_kd.engine import RunDir
    from ssl_kd.run import make_runner

    raw = load_yaml(ROOT / "configs" / "fullmatch_cifar10_40.yaml")
    raw["data"].update({"dataset": "npz", "path": str(npz), "num_workers": args.workers, "limit_test": 100})
    raw["models"]["net"]["arch"] = args.arch
    st = raw["stages"]["fullmatch"]
    st.update({"iters": iters, "batch_size": args.batch, "uratio": args.uratio})
    st["eval"]["every"] = 10**9
    st["checkpoint"]["every"] = 10**9
    raw["experiment"] = {"name": "throughput", "precision": args.precision, "logger": {"progress": False}}
    cfg = validate_config(raw)
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision=args.precision, cpu=not torch.cuda.is_available())
    return make_runner(cfg, RunDir(out), resolved_dict(cfg), acc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="wrn_28_2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--uratio", type=int, default=7)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    args = ap.parse_args()
    from accelerate.utils import send_to_device

    from ssl_kd.engine import Callback
    from ssl_kd.engine.build import build_models
    from ssl_kd.optim import build_optimizer

    imgs = args.batch * (1 + 2 * args.uratio)
    n = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz, source = make_npz(tmp, Path(args.data_root))
        runner = build(args, npz, tmp / "a", args.warmup + n)
        dev = runner.device
        print(f"{args.arch}, batch {args.batch} + 2x{args.batch * args.uratio} = {imgs} images/step, {source}, "
              f"device {dev}, precision {args.precision}, {args.workers} loader workers, "
              f"{torch.get_num_threads()} torch threads", flush=True)  # fmt: skip

        # 1) data alone: the stage's own streams through the runner's loaders
        from ssl_kd.stages.semi_supervised import FullMatch

        runner.models = build_models(runner.cfg, runner.data.num_classes, dev)
        stage = FullMatch("fullmatch", runner.cfg.stages["fullmatch"], runner)
        runner.stage = stage
        stage.setup()
        iters = runner._make_iterators(stage)
        batch = None
        for i in range(args.warmup + n):
            if i == args.warmup:
                t0 = time.perf_counter()
            batch = {k: next(it) for k, it in iters.items()}
        data_s = (time.perf_counter() - t0) / n
        for it in iters.values():  # stop the prefetching workers before timing compute on the same cores
            it._shutdown_workers()
        del iters

        # 2) compute alone: one batch on the device, step repeated
        net = runner.models["net"].train()
        stage._prepared.models = {"net": net}
        opt = build_optimizer(stage.cfg.optimizer, list(net.named_parameters()))
        batch = send_to_device(batch, dev)
        weights = {k: w for k, w in stage.cfg.loss_weights.items() if w}
        for i in range(args.warmup + n):
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
        compute_s = (time.perf_counter() - t0) / n

        # 3) the runner end to end (fresh runner, same config)
        class Clock(Callback):
            order = 10_000
            t: dict[int, float] = {}

            def on_step_end(self, r, terms) -> None:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                self.t[r.global_step] = time.perf_counter()

        runner2 = build(args, npz, tmp / "b", args.warmup + n)
        runner2.experiment_callbacks.append(Clock())
        runner2.run()
        e2e_s = (Clock.t[args.warmup + n] - Clock.t[args.warmup]) / n

    print(f"{'':<22}{'s/step':>9}{'it/s':>9}{'images/s':>10}")
    for name, s in (("data pipeline alone", data_s), ("compute alone", compute_s), ("runner end to end", e2e_s)):
        print(f"{name:<22}{s:>9.3f}{1 / s:>9.3f}{imgs / s:>10.0f}")
    print(f"data/compute time ratio {data_s / compute_s:.2f} ({'data' if data_s > compute_s else 'compute'}-bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
