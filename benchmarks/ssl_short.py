"""FixMatch vs FullMatch on real CIFAR-10, same seed, same short budget, side by side.

Prints test accuracy (EMA and raw), mask rate and pseudo-label accuracy over time for both, and writes each run's
report (PNG plots). The budget is sized for the machine: on CPU a small model and a few thousand steps; on a GPU
(`--gpu`) WRN-28-2 at the reference batch.

    python benchmarks/ssl_short.py                       # CPU: resnet8, 250 labels, 1500 steps (~15 min, 2 cores)
    python benchmarks/ssl_short.py --gpu --iters 20000    # GPU: wrn_28_2, batch 64, mu 7
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--gpu", action="store_true", help="reference model and batch (needs a GPU)")
    ap.add_argument("--labels", type=int, default=250)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    args = ap.parse_args()
    if not (Path(args.data_root) / "cifar10.npz").exists():
        print(f"needs {args.data_root}/cifar10.npz (set --data-root or SSL_KD_DATA)", file=sys.stderr)
        return 2

    from ssl_kd.engine.run_dir import read_metrics
    from ssl_kd.report import make_report
    from ssl_kd.run import main as run

    if args.gpu:
        size = ["models.net.arch=wrn_28_2", "stages.{s}.batch_size=64", "stages.{s}.uratio=7", "data.num_workers=8"]
        ema = 0.999
    else:
        size = ["models.net.arch=resnet8", "stages.{s}.batch_size=32", "stages.{s}.uratio=3", "data.num_workers=2",
                "data.limit_test=2000"]  # fmt: skip
        ema = 0.99
    out = Path(args.out or tempfile.mkdtemp(prefix="ssl_short_"))
    results = {}
    for algo in ("fixmatch", "fullmatch"):
        cfg = ROOT / "configs" / f"{algo}_cifar10_40.yaml"
        run_dir = out / algo
        argv = [str(cfg), f"data.root={args.data_root}", f"data.ssl.num_labels={args.labels}",
                f"experiment.seed={args.seed}", f"experiment.output_dir={run_dir}", "experiment.logger.log_every=50",
                f"stages.{algo}.iters={args.iters}", f"stages.{algo}.eval.every={args.eval_every}",
                f"stages.{algo}.checkpoint.every={args.iters}", f"stages.{algo}.ema.decay={ema}",
                *[a.format(s=algo) for a in size]]  # fmt: skip
        print(f"== {algo}: {' '.join(argv[1:])}", flush=True)
        if run(argv) != 0:
            return 1
        results[algo] = read_metrics(run_dir)
        make_report(run_dir)

    def series(recs, key, kind):
        return {r["step"]: r[key] for r in recs if r["kind"] == kind and key in r}

    print(f"\nCIFAR-10, {args.labels} labels, seed {args.seed}, {args.iters} steps ({'GPU' if args.gpu else 'CPU'})")
    head = f"{'step':>6} | " + " | ".join(f"{a:^40}" for a in results)
    sub = " | ".join(f"{'top1 EMA / raw':>16} {'mask':>7} {'pl_acc':>7}" for _ in results)
    print(head + "\n" + f"{'':>6} | " + sub)
    steps = sorted(series(results["fixmatch"], "test/net/top1", "eval"))
    for s in steps:
        cells = []
        for recs in results.values():
            ema_acc = series(recs, "test/net/top1", "eval").get(s, float("nan"))
            raw_acc = series(recs, "test/net/raw_top1", "eval").get(s, float("nan"))
            mask = series(recs, "train/mask", "train").get(s, float("nan"))
            pla = series(recs, "train/pl_acc", "train").get(s, float("nan"))
            cells.append(f"{100 * ema_acc:7.2f} / {100 * raw_acc:5.2f}  {100 * mask:6.1f}% {100 * pla:6.1f}%")
        print(f"{s:>6} | " + " | ".join(f"{c:^40}" for c in cells))
    for algo, recs in results.items():
        best = max(r["test/net/top1"] for r in recs if r["kind"] == "eval")
        print(f"{algo}: best EMA top-1 {100 * best:.2f}%  (report: {out / algo / 'report' / 'report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
