"""Throughput of the FullMatch step (WRN-28-2, reference batch 64 labelled + 2 x 448 unlabelled views), side by side.

In one run, on one device: the ssl_kd runner end to end with the host data path (per-image augmentation in
DataLoader workers, the reference-exact default) and with the device data path (`data.pipeline: device`), the host
pipeline alone (loaders only) and the compute alone (one batch, step repeated), and, when `semilearn` is
importable (from the environment or `--usb-site DIR`), USB's FixMatch as USB trains it (benchmarks/usb_fixmatch.py,
in a subprocess, at the same worker count). For each: it/s, images/s (960 per step), the time 2^20 iterations would
take, the GPU's busy share while timing (nvidia-smi / pynvml samples, when available), the host syncs counted while
timing (CUDA: `torch.cuda.set_sync_debug_mode("warn")` between the two timing points, end-to-end rows; in all and
at the steps that do not log) and the ratio to USB.

`--pipelines`, `--compile` and `--workers` take comma lists: every combination is one row, the compute alone is
timed once per compile mode, the host pipeline alone and USB once per worker count. `--json OUT` writes the rows
(benchmarks/gpu_suite_table.py turns one or more such files into a markdown table).

    python benchmarks/throughput.py                                      # CPU: says so, prints CPU numbers
    python benchmarks/throughput.py --precision bf16 --channels-last    # GPU machine
    python benchmarks/throughput.py --precision bf16 --channels-last --compile no,default,reduce-overhead \
        --workers 12,4 --usb-site /tmp/site --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, whatever is installed
sys.path.insert(0, str(ROOT / "benchmarks"))

import _usb  # noqa: E402

COMPILE_MODES = ("no", "default", "reduce-overhead", "max-autotune")


def make_npz(root: Path, data_root: Path) -> tuple[Path, str]:
    shared = data_root.resolve() / "cifar10.npz"
    if shared.exists():
        return shared, f"real CIFAR-10 ({len(np.load(shared)['y_train']):,} training images)"
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
    """The runner as `python -m ssl_kd.run` drives it; timed between two synchronised points, nothing per step. On
    CUDA the host syncs between those points are counted (sync debug mode "warn": one warning per sync), in all and
    at the steps that do not log (`experiment.logger.log_every`: metrics are read on the host only at logging steps)."""
    from ssl_kd.engine import Callback

    warm, n = args.warmup, args.steps
    cuda = torch.cuda.is_available()
    caught: list[warnings.WarningMessage] = []

    def is_sync(w: warnings.WarningMessage) -> bool:
        return "synchroniz" in str(w.message).lower()

    class Clock(Callback):
        order = 10_000  # after the loggers: a logging step's reads fall into that step's count

        def __init__(self) -> None:
            self.t0 = self.t1 = 0.0
            self.busy = GpuBusy()
            self.busy_pct: float | None = None
            self.seen = 0
            self.off_log_steps = 0

        def on_step_end(self, runner, terms) -> None:
            step = runner.global_step
            if warm < step <= warm + n:
                new = sum(1 for w in caught[self.seen :] if is_sync(w))
                self.seen = len(caught)
                if step % runner.cfg.experiment.logger.log_every:
                    self.off_log_steps += new
            if step == warm:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("warn")
                self.busy.start()
                self.t0 = time.perf_counter()
            elif step == warm + n:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
                    torch.cuda.synchronize()
                self.t1 = time.perf_counter()
                self.busy_pct = self.busy.stop()

    clock = Clock()
    with warnings.catch_warnings(record=True) as caught_here:
        warnings.simplefilter("always")
        caught = caught_here
        build(args, config(args, npz, pipeline, warm + n), out, extra=[clock]).run()
    syncs = [str(w.message).splitlines()[0] for w in caught if is_sync(w)]
    return {"s": (clock.t1 - clock.t0) / n, "busy": clock.busy_pct, "syncs": syncs if cuda else None,
            "syncs_off_log_steps": clock.off_log_steps if cuda else None}  # fmt: skip


def host_pipeline_alone(args, npz: Path, out: Path) -> dict:
    """The host pipeline alone: the stage's own loaders at `args.workers`, batches drawn and dropped. Returns the
    seconds per step and the last batch (the compute-alone input)."""
    runner, stage = _stage(args, npz, out)
    iters = runner._make_iterators(stage)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0 = time.perf_counter()
        batch = {k: next(it) for k, it in iters.items()}
    data_s = (time.perf_counter() - t0) / args.steps
    for it in iters.values():  # stop the prefetching workers before timing compute on the same cores
        if hasattr(it, "_shutdown_workers"):  # none with 0 workers
            it._shutdown_workers()
    return {"s": data_s, "batch": batch}


def _stage(args, npz: Path, out: Path):
    """The runner and its FullMatch stage, set up as the runner sets a stage up (no loop)."""
    from ssl_kd.engine.build import build_models

    runner = build(args, config(args, npz, "host", args.warmup + args.steps), out)
    runner.models = build_models(runner.cfg, runner.data.num_classes, runner.device)
    runner.stage_index = 0
    runner.stage = stage = runner.new_stage(0, "fullmatch", runner.cfg.stages["fullmatch"])
    stage.setup()
    return runner, stage


def compute_alone(args, npz: Path, out: Path, batch: dict) -> dict:
    """The compute alone at `args.compile`: one batch already on the device, the stage's train_step, backward and
    the optimizer step repeated (no data, no EMA, no logging)."""
    from accelerate.utils import send_to_device

    from ssl_kd.optim import build_optimizer

    runner, stage = _stage(args, npz, out)
    dev = runner.device
    net = runner.models["net"].train()
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    runner.context.prepared.models = {"net": torch.compile(net, mode=args.compile) if args.compile != "no" else net}
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
    return {"s": (time.perf_counter() - t0) / args.steps}


def usb(args) -> dict | None:
    """USB's FixMatch in a subprocess (benchmarks/usb_fixmatch.py) at `args.workers`, `--amp` when ssl_kd runs in
    reduced precision; None when semilearn cannot be found, RuntimeError (with USB's stderr) when its run fails."""
    if not _usb.semilearn_available(args.usb_site):
        return None
    cmd = [sys.executable, str(ROOT / "benchmarks" / "usb_fixmatch.py"), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--workers", str(args.workers), "--batch", str(args.batch), "--uratio", str(args.uratio),
           "--data-root", args.data_root] + (["--amp"] if args.precision != "no" else [])  # fmt: skip
    if args.usb_site:
        cmd += ["--usb-site", args.usb_site]
    if not torch.cuda.is_available():
        cmd.append("--smoke")
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"USB run failed ({res.returncode}): {res.stderr[-1500:]}")
    out = json.loads(lines[-1])
    note = next((line for line in res.stdout.splitlines() if "stand-in" in line), None)
    return {"s": 1.0 / out["usb_fixmatch_it_s"], "busy": out.get("gpu_busy"), "syncs": None, "note": note,
            "amp": out["amp"]}  # fmt: skip


def _csv(text: str, valid: tuple[str, ...] | None, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if valid is not None and t not in valid]
    if not items or bad:
        sys.exit(f"{what}: {bad or text!r} is not valid; a comma list of {', '.join(valid or ())}")
    return items


def _reset_compiled() -> None:
    """Between rows: drop compiled graphs (each run compiles fresh modules; without a reset dynamo's recompile
    limit would silently send later rows to eager) and cached GPU memory. The on-disk compile cache stays."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(args, npz: Path, tmp: Path, write) -> list[dict]:
    """Every row of the matrix, in this order per worker count: USB, the host pipeline alone, the compute alone
    (first worker count only), then each compile mode x data path end to end. `write(rows)` after each row. A row
    that fails is kept as an error row (its traceback on stderr) and the matrix goes on."""
    imgs = args.batch * (1 + 2 * args.uratio)
    rows: list[dict] = []
    base = {"precision": args.precision, "channels_last": args.channels_last}

    def attempt(kind: str, fn, fargs: tuple, **where) -> dict | None:
        row = {"kind": kind, **base, "pipeline": None, "compile": None, "workers": None, **where, "s_per_step": None,
               "it_s": None, "images_s": None, "hours_2_20": None, "gpu_busy": None, "host_syncs": None,
               "syncs_per_step": None, "x_usb": None}  # fmt: skip
        _reset_compiled()
        try:
            with _quiet():
                r = fn(*fargs)
        except Exception as exc:
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            r = None
        if r is None and "error" not in row:
            return None
        if r is not None:
            s = r["s"]
            row.update({"s_per_step": s, "it_s": 1.0 / s, "images_s": imgs / s, "hours_2_20": 2**20 * s / 3600,
                        "gpu_busy": r.get("busy")})  # fmt: skip
            row.update({k: r[k] for k in ("amp", "note") if k in r})
            if r.get("syncs") is not None:
                row["host_syncs"] = len(r["syncs"])
                row["syncs_per_step"] = len(r["syncs"]) / args.steps
                row["syncs_off_log_steps"] = r.get("syncs_off_log_steps")
                row["sync_examples"] = sorted(set(r["syncs"]))[:5]
            peer = next((p for p in rows if p["kind"] == "usb" and p["workers"] == row["workers"]), None)
            if kind == "ssl_kd" and peer is not None and peer["s_per_step"]:
                row["x_usb"] = peer["s_per_step"] / s
        rows.append(row)
        write(rows)
        print(_line(row), flush=True)
        return r

    for wi, workers in enumerate(args.workers):
        a = argparse.Namespace(**{**vars(args), "workers": workers, "compile": "no"})
        if not args.no_usb:
            attempt("usb", usb, (a,), workers=workers)
        if args.parts:
            got = attempt("host pipeline alone", host_pipeline_alone, (a, npz, tmp / f"data_{workers}"),
                          pipeline="host", workers=workers)  # fmt: skip
            for mode in args.compile if wi == 0 and got and args.compute_alone else []:
                c = argparse.Namespace(**{**vars(a), "compile": mode})
                attempt("compute alone", compute_alone, (c, npz, tmp / f"compute_{mode}", got["batch"]),
                        compile=mode)  # fmt: skip
        for mode in args.compile:
            for p in args.pipelines:
                c = argparse.Namespace(**{**vars(a), "compile": mode})
                attempt("ssl_kd", end_to_end, (c, npz, p, tmp / f"e2e_{p}_{mode}_{workers}"), pipeline=p,
                        compile=mode, workers=workers)  # fmt: skip
    return rows


@contextlib.contextmanager
def _quiet():
    """The runner's own output (plan, progress, summary) held back; shown only when the row fails."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    except BaseException:
        sys.stdout.write(buf.getvalue()[-4000:])
        raise


HEADER = f"{'':<44}{'s/step':>9}{'it/s':>9}{'images/s':>10}{'2^20 it':>10}{'GPU busy':>10}{'syncs':>7}{'x USB':>7}"


def _line(row: dict) -> str:
    bits = [{"usb": "USB FixMatch" + (" amp" if row.get("amp") else ""), "ssl_kd": f"ssl_kd {row['pipeline']}"}.get(
        row["kind"], row["kind"])]  # fmt: skip
    bits += [{"no": "eager"}.get(row["compile"], row["compile"])] if row["compile"] else []
    bits += [f"{row['workers']} workers"] if row["workers"] is not None else []
    if row.get("error"):
        return f"{', '.join(bits):<44}failed: {row['error']}"
    busy = f"{row['gpu_busy']:.0f} %" if row["gpu_busy"] is not None else "-"
    syncs = str(row["host_syncs"]) if row["host_syncs"] is not None else "-"
    ratio = f"{row['x_usb']:.1f}" if row["x_usb"] is not None else "-"
    return (f"{', '.join(bits):<44}{row['s_per_step']:>9.3f}{row['it_s']:>9.2f}{row['images_s']:>10.0f}"
            f"{row['hours_2_20']:>9.1f}h{busy:>10}{syncs:>7}{ratio:>7}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="wrn_28_2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--uratio", type=int, default=7)
    ap.add_argument("--workers", default=str(min(8, os.cpu_count() or 1)), help="comma list, e.g. 12,4")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", default="no", help="comma list of " + ", ".join(COMPILE_MODES))
    ap.add_argument("--pipelines", default="host,device", help="comma list of host, device")
    ap.add_argument("--no-parts", dest="parts", action="store_false", help="skip the host-alone / compute-alone rows")
    ap.add_argument("--no-compute-alone", dest="compute_alone", action="store_false",
                    help="skip the compute-alone rows (another call with the same settings has them)")  # fmt: skip
    ap.add_argument("--no-usb", action="store_true", help="skip USB even when semilearn is importable")
    ap.add_argument("--usb-site", default=None, help="folder with semilearn 0.3.2 (pip install --no-deps --target)")
    ap.add_argument("--sync-debug", action="store_true", help="print where the counted host syncs happened")
    ap.add_argument("--json", default=None, metavar="OUT", help="write the rows (and the run's settings) here")
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    args = ap.parse_args()
    args.compile = _csv(args.compile, COMPILE_MODES, "--compile")
    args.pipelines = _csv(args.pipelines, ("host", "device"), "--pipelines")
    try:
        args.workers = [int(w) for w in _csv(args.workers, None, "--workers")]
    except ValueError:
        sys.exit(f"--workers: {args.workers!r} is not valid; a comma list of integers, e.g. 12,4")
    imgs = args.batch * (1 + 2 * args.uratio)
    cuda = torch.cuda.is_available()
    dev_name = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, no GPU: CPU numbers)"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz, source = make_npz(tmp, Path(args.data_root))
        meta = {"device": dev_name, "cuda": cuda, "torch": torch.__version__, "arch": args.arch,
                "batch": args.batch, "uratio": args.uratio, "images_per_step": imgs, "data": source,
                "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
                "channels_last": args.channels_last, "cpu_count": os.cpu_count(), "torch_threads":
                torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
        print(f"{args.arch}, batch {args.batch} + 2x{args.batch * args.uratio} = {imgs} images/step, {source}, "
              f"{dev_name}, torch {torch.__version__}, precision {args.precision}, channels_last "
              f"{args.channels_last}, compile {','.join(args.compile)}, {','.join(map(str, args.workers))} loader "
              f"workers, {torch.get_num_threads()} torch threads, {args.warmup} + {args.steps} steps",
              flush=True)  # fmt: skip
        print(HEADER)

        def write(rows: list[dict]) -> None:
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")

        rows = measure(args, npz, tmp, write)

    notes = {r["note"] for r in rows if r.get("note")}
    for note in sorted(notes):
        print(f"USB: {note}")
    if not any(r["kind"] == "usb" for r in rows) and not args.no_usb:
        print("USB: not measured (semilearn is not importable here; --usb-site DIR, or carry it as wheels)")
    for r in rows:
        if r.get("host_syncs") and args.sync_debug:
            print(f"{_line(r)[:44].strip()}: {r['host_syncs']} host syncs while timing: {r['sync_examples']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
