"""Every SSL preset on real CIFAR-10 at the same short budget, side by side (same split, init and data order).

All presets run from one protocol (configs/freematch_cifar10_40.yaml: USB's classic_cv augmentation and
normalisation) with only the stage type swapped, the same labelled batch and mu (so the same images in the same
order: Pseudo-Label, Pi-model and Mean Teacher use mu = 1 in USB, here the common mu) and the same seeds. Dash's
warm-up is a tenth of the budget. Prints test top-1 (EMA; best and last), the last logged mask rate / mean weight and
pseudo-label accuracy per preset and seed, and writes each run's report (PNG plots) and a table (results.md).

What the budget can show: early-training behaviour (how fast each policy admits pseudo-labels, how accurate they
are, where the accuracy stands after a few thousand steps). What it cannot: the reference error rates, which need
2^20 steps of WRN-28-2 (configs/README.md); the ranking of the presets at the end of training may differ.

    python benchmarks/ssl_short.py                               # CPU: resnet8, 250 labels, 1500 steps, 2 seeds
    python benchmarks/ssl_short.py --gpu --iters 20000           # GPU: wrn_28_2, batch 64, mu 7
    python benchmarks/ssl_short.py --algos fixmatch freematch --iters 20 --seeds 0   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]


PRESETS = ["fixmatch", "flexmatch", "fullmatch", "fullflex", "freematch", "softmatch", "adamatch", "dash", "uda",
           "pseudolabel", "pimodel", "meanteacher"]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--gpu", action="store_true", help="reference model and batch (needs a GPU)")
    ap.add_argument("--labels", type=int, default=250)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--algos", nargs="+", default=PRESETS, choices=PRESETS)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    args = ap.parse_args()
    if not (Path(args.data_root) / "cifar10.npz").exists():
        print(f"needs {args.data_root}/cifar10.npz (set --data-root or SSL_KD_DATA)", file=sys.stderr)
        return 2

    from ssl_kd.engine.run_dir import read_metrics
    from ssl_kd.report import make_report
    from ssl_kd.run import main as run

    s = "freematch"  # the stage's name in the shared protocol
    if args.gpu:
        size = ["models.net.arch=wrn_28_2", f"stages.{s}.batch_size=64", f"stages.{s}.uratio=7", "data.num_workers=8"]
        ema = 0.999
    else:
        size = ["models.net.arch=resnet8", "models.net.kwargs={}", f"stages.{s}.batch_size=32", f"stages.{s}.uratio=3",
                "data.num_workers=2", "data.limit_test=2000"]  # fmt: skip
        ema = 0.99
    out = Path(args.out or tempfile.mkdtemp(prefix="ssl_short_"))
    cfg = ROOT / "configs" / "freematch_cifar10_40.yaml"
    rows = []
    for algo in args.algos:
        for seed in args.seeds:
            run_dir = out / f"{algo}_s{seed}"
            extra = [f"stages.{s}.threshold.warmup_iters={max(1, args.iters // 10)}"] if algo == "dash" else []
            argv = [str(cfg), f"data.root={args.data_root}", f"data.ssl.num_labels={args.labels}",
                    f"experiment.seed={seed}", f"experiment.output_dir={run_dir}", "experiment.logger.log_every=50",
                    f"stages.{s}.type={algo}", f"stages.{s}.iters={args.iters}",
                    f"stages.{s}.eval.every={args.eval_every}", f"stages.{s}.checkpoint.every={args.iters}",
                    f"stages.{s}.ema.decay={ema}", *size, *extra]  # fmt: skip
            print(f"== {algo} seed {seed}: {' '.join(argv[1:])}", flush=True)
            if run(argv) != 0:
                return 1
            recs = read_metrics(run_dir)
            make_report(run_dir)
            evals = [r for r in recs if r["kind"] == "eval"]
            train = [r for r in recs if r["kind"] == "train"]
            last = train[-1]
            best = max(r["test/net/top1"] for r in evals)
            final = evals[-1]["test/net/top1"]
            rows.append((algo, seed, best, final, last.get("train/mask"), last.get("train/pl_acc")))

    where = "GPU, wrn_28_2" if args.gpu else "CPU, resnet8"
    lines = [f"CIFAR-10, {args.labels} labels, {args.iters} steps ({where}), seeds {args.seeds}", "",
             "| preset | seed | best top-1 (EMA) | last top-1 | mask / mean weight | pseudo-label acc |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for algo, seed, best, last, mask, pla in rows:
        cells = [f"{100 * best:.2f}", f"{100 * last:.2f}", f"{100 * mask:.1f} %", f"{100 * pla:.1f} %"]
        lines.append(f"| {algo} | {seed} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    (out / "results.md").write_text(text + "\n")
    print(f"\nruns, reports and results.md under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
