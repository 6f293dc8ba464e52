"""Ops dispatched per training step of the FullMatch config, by phase: what a GPU would launch (each aten op is one
or more kernels), counted on any machine. A step that is launch-bound on a GPU shows here as a large count in one
phase; the count does not depend on the batch size.

Phases: data (the feed: the next batch drawn, moved and finished — on the device path, the augmentation kernels;
on the host path, collation, which runs in loader workers on a GPU machine), step (the stage's forward and losses),
backward, optimizer (step + zero_grad), EMA, and the rest (the runner and the other callbacks: metrics, NaN guard,
checkpoint and eval schedules, progress).

    python benchmarks/step_ops.py [--arch wrn_28_2] [--steps 3] [--out benchmarks/results/step_ops_cpu.txt]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, whatever is installed


class PhaseCounter(TorchDispatchMode):
    """Counts dispatched aten ops per phase; `phase(name)` marks a region (nested regions count as the innermost)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.ops: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.stack = ["rest"]
        self.active = False

    @contextlib.contextmanager
    def phase(self, name: str):
        self.stack.append(name)
        try:
            yield
        finally:
            self.stack.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active:
            name = str(func.overloadpacket)
            if not name.startswith("profiler."):
                self.counts[self.stack[-1]] += 1
                self.ops[self.stack[-1]][name] += 1
        return func(*args, **(kwargs or {}))


def in_phase(owner, attr: str, counter: PhaseCounter, phase: str, saved: dict) -> None:
    """Replace `owner.attr` (a method or a bound callable) by one that runs inside `counter.phase(phase)`; the
    original goes into `saved` to be put back."""
    fn = getattr(owner, attr)
    saved[(owner, attr)] = fn

    def wrapped(*a, **k):
        with counter.phase(phase):
            return fn(*a, **k)

    setattr(owner, attr, wrapped)


def run(pipeline: str, args, tmp: Path) -> tuple[PhaseCounter, int]:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import ssl_kd.stages  # noqa: F401  (registers the stage types)
    from ssl_kd.config import load_yaml, resolved_dict, validate_config
    from ssl_kd.engine import Callback, RunDir
    from ssl_kd.engine.feed import DeviceFeed
    from ssl_kd.memory import EMAModel
    from ssl_kd.run import make_runner

    rng = np.random.default_rng(0)
    npz = tmp / "cifar_like.npz"
    y = np.repeat(np.arange(10), 50)
    np.savez(npz, x_train=rng.integers(0, 256, (500, 32, 32, 3), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=y[:20])  # fmt: skip
    raw = load_yaml(ROOT / "configs" / "fullmatch_cifar10_40.yaml")
    raw["data"].update({"dataset": "npz", "path": str(npz), "num_workers": 0, "limit_test": 20, "pipeline": pipeline})
    raw["models"]["net"]["arch"] = args.arch
    st = raw["stages"]["fullmatch"]
    warm, n = 2, args.steps
    st.update({"iters": warm + n + 1, "batch_size": 8, "uratio": 2})
    st.setdefault("optimizer", {})["impl"] = "fused"  # the update kernel `impl: auto` picks on CUDA
    st["eval"]["every"] = 10**9
    st["checkpoint"]["every"] = 10**9
    raw["experiment"] = {"name": f"ops_{pipeline}", "logger": {"progress": False, "log_every": 10**6}}
    cfg = validate_config(raw)
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    counter = PhaseCounter()

    class Window(Callback):
        order = 10**9  # after every other callback: the window holds whole steps

        def on_step_end(self, runner, terms) -> None:
            if runner.global_step == warm:
                counter.active = True
            elif runner.global_step == warm + n:
                counter.active = False

    runner = make_runner(cfg, RunDir(tmp / pipeline), resolved_dict(cfg), acc, extra=[Window()])
    from accelerate.optimizer import AcceleratedOptimizer

    stage_cls = type(runner.new_stage(0, "fullmatch", cfg.stages["fullmatch"]))
    saved: dict = {}
    for owner, attr, phase in (
        (runner.accelerator, "backward", "backward"), (DeviceFeed, "take", "data"), (DeviceFeed, "prefetch", "data"),
        (EMAModel, "update", "EMA"), (stage_cls, "train_step", "step"), (AcceleratedOptimizer, "step", "optimizer"),
        (AcceleratedOptimizer, "zero_grad", "optimizer"),
    ):  # fmt: skip
        in_phase(owner, attr, counter, phase, saved)
    try:
        with counter:
            runner.run()
    finally:
        for (owner, attr), f in saved.items():
            setattr(owner, attr, f)
    return counter, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="wrn_28_2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--pipelines", default="host,device")
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args()
    phases = ("data", "step", "backward", "optimizer", "EMA", "rest")
    lines = [f"FullMatch config, {args.arch}, ops dispatched per training step (mean of {args.steps} steps), "
             f"torch {torch.__version__}", "", "| data path | " + " | ".join(phases) + " | total |",
             "|---" * (len(phases) + 2) + "|"]  # fmt: skip
    detail = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.pipelines.split(","):
            counter, n = run(p.strip(), args, Path(tmp))
            row = [counter.counts[ph] / n for ph in phases]
            lines.append(f"| {p} | " + " | ".join(f"{v:.0f}" for v in row) + f" | {sum(row):.0f} |")
            top = ", ".join(f"{k} {v / n:.0f}" for k, v in counter.ops["rest"].most_common(6))
            detail.append(f"{p}: most frequent in 'rest': {top}")
    text = "\n".join(lines + [""] + detail)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
