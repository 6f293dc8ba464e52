"""FixMatch with the host data path vs the device data path: same budget, same seeds, real CIFAR-10.

The device path's augmentation follows the same ops and parameter distributions as the host path but draws its
parameters from another random stream, so the two runs of a seed differ like two seeds do: the question is
whether the final accuracies agree within seed noise. Prints the EMA test top-1 of every run and the mean and
spread per path.

    python benchmarks/pipeline_short.py                          # CPU: resnet8, 250 labels, 600 steps, seeds 0 1
    python benchmarks/pipeline_short.py --gpu --iters 20000      # GPU: wrn_28_2 at the reference batch, bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, whatever is installed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--gpu", action="store_true", help="reference model and batch, bf16 (needs a GPU)")
    ap.add_argument("--labels", type=int, default=250)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--pipelines", default="host,device")
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    args = ap.parse_args()
    if not (Path(args.data_root) / "cifar10.npz").exists():
        print(f"needs {args.data_root}/cifar10.npz (set --data-root or SSL_KD_DATA)", file=sys.stderr)
        return 2

    from ssl_kd.engine.run_dir import read_metrics
    from ssl_kd.run import main as run

    if args.gpu:
        size = ["models.net.arch=wrn_28_2", "stages.fixmatch.batch_size=64", "stages.fixmatch.uratio=7",
                "data.num_workers=8", "experiment.precision=bf16", "experiment.channels_last=true"]  # fmt: skip
        ema = 0.999
    else:
        size = ["models.net.arch=resnet8", "stages.fixmatch.batch_size=32", "stages.fixmatch.uratio=3",
                "data.num_workers=2", "data.limit_test=2000"]  # fmt: skip
        ema = 0.99
    out = Path(args.out or tempfile.mkdtemp(prefix="pipeline_short_"))
    final: dict[str, list[float]] = {p: [] for p in args.pipelines.split(",")}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for pipeline in final:
            run_dir = out / f"{pipeline}_seed{seed}"
            argv = [str(ROOT / "configs" / "fixmatch_cifar10_40.yaml"), f"data.root={args.data_root}",
                    f"data.ssl.num_labels={args.labels}", f"data.pipeline={pipeline}", f"experiment.seed={seed}",
                    f"experiment.output_dir={run_dir}", "experiment.logger.log_every=50",
                    "experiment.logger.progress=false", f"stages.fixmatch.iters={args.iters}",
                    f"stages.fixmatch.eval.every={args.iters}", f"stages.fixmatch.checkpoint.every={args.iters}",
                    f"stages.fixmatch.ema.decay={ema}", *size]  # fmt: skip
            print(f"== {pipeline}, seed {seed}", flush=True)
            if run(argv) != 0:
                return 1
            ev = [r for r in read_metrics(run_dir) if r["kind"] == "eval"][-1]
            final[pipeline].append(100 * ev["test/net/top1"])
    print(f"\nFixMatch, CIFAR-10, {args.labels} labels, {args.iters} steps, EMA test top-1 % at the end:")
    for pipeline, accs in final.items():
        spread = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        runs = ", ".join(f"{a:.2f}" for a in accs)
        print(f"  {pipeline:<7} {runs:<24} mean {statistics.fmean(accs):.2f} (sd {spread:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
