"""Fault injection over every stateful stage type: kill -9 at random steps, inside a checkpoint write and at a stage
boundary, then --resume; and a flipped bit in the last checkpoint. Each cell says whether the final weights are
bit-identical to the uninterrupted run's (or, for a damaged file, whether the run fell back and still matched).

    python benchmarks/fault_injection.py                       # every config below, 3 random kill points each
    python benchmarks/fault_injection.py --only fixmatch --points 5 --seed 1

Each config runs at the test suite's small size (small models, fake data in the real file formats, `--steps` steps
per stage, a checkpoint every 2 steps). The kills are real SIGKILLs of a child process (the short version is
tests/e2e/test_faults.py).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(mode: str, at: int, argv: list[str]) -> int:
    """Run the CLI in this process and SIGKILL it at global step `at` ('step'), or in the middle of the `at`-th
    checkpoint write ('write')."""
    sys.path.insert(0, str(ROOT))
    import ssl_kd.callbacks as callbacks_mod
    from ssl_kd.engine import Callback, checkpoint_io
    from ssl_kd.run import main

    if mode == "step":

        class Kill(Callback):
            order = 1000

            def on_step_end(self, runner, terms) -> None:
                if runner.global_step == at:
                    os.kill(os.getpid(), signal.SIGKILL)

        orig = callbacks_mod.experiment_callbacks
        callbacks_mod.experiment_callbacks = lambda cfg: [*orig(cfg), Kill()]
    else:
        save, count = checkpoint_io.torch.save, [0]

        def torn(obj, f, *a, **k):
            count[0] += 1
            if count[0] == at:
                f.write(b"PK\x03\x04 a torn write")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, f, *a, **k)

        checkpoint_io.torch.save = torn
    return main(argv)


def _run(argv: list[str], kill: tuple[str, int] | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", *(map(str, kill) if kill else ("none", "0")), "--", *argv]
    return subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).returncode


def _weights(run: Path):
    import torch

    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["models"]


def _same(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        a[m].keys() == b[m].keys() and all(torch.equal(a[m][k], b[m][k]) for k in a[m]) for m in a
    )


def _flip(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 16)
    raw = bytearray(path.read_bytes())
    h = info.header_offset
    start = h + 30 + int.from_bytes(raw[h + 26 : h + 28], "little") + int.from_bytes(raw[h + 28 : h + 30], "little")
    raw[start + 7] ^= 0x01
    path.write_bytes(bytes(raw))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="substring of the config names to run")
    ap.add_argument("--points", type=int, default=3, help="random kill points per config")
    ap.add_argument("--steps", type=int, default=8, help="steps per stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, at = args.child
        if mode == "none":
            sys.path.insert(0, str(ROOT))
            from ssl_kd.run import main as run_main

            sys.exit(run_main(args.rest))
        sys.exit(_child(mode, int(at), args.rest))

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from helpers import STATEFUL_CONFIGS, fault_overrides, make_fake_data_root

    rng = random.Random(args.seed)
    configs = [c for c in STATEFUL_CONFIGS if args.only in c]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_fake_data_root(Path(tmp) / "data")
        for name in configs:
            matches = sorted((ROOT / "configs").glob(f"{name}*.yaml"))
            if not matches:
                rows.append((name, "-", "no such config"))
                continue
            path = matches[0]
            over = fault_overrides(path, data, args.steps)
            base = Path(tmp) / path.stem
            full = base / "full"
            t0 = time.time()
            if _run([str(path), *over, f"experiment.output_dir={full}"]) != 0:
                rows.append((path.stem, "full run", "FAILED"))
                continue
            import torch

            total = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["global_step"]
            kills = [("step", rng.randint(1, total - 1)) for _ in range(args.points)]
            kills += [("step", args.steps), ("write", rng.randint(1, 3))]  # a stage boundary, a torn write
            for i, kill in enumerate(kills):
                cut = base / f"cut{i}"
                rc = _run([str(path), *over, f"experiment.output_dir={cut}"], kill)
                resumed = _run([str(cut / "config.yaml"), "--resume"])
                ok = resumed == 0 and _same(_weights(full), _weights(cut))
                rows.append((path.stem, f"kill -9 {kill[0]} {kill[1]} (rc {rc})", "identical" if ok else "DIFFERS"))
            cut = base / "flip"
            _run([str(path), *over, f"experiment.output_dir={cut}"], ("step", total - 2))
            if (cut / "checkpoints" / "previous.pt").exists():
                _flip(cut / "checkpoints" / "last.pt")
                ok = _run([str(cut / "config.yaml"), "--resume"]) == 0 and _same(_weights(full), _weights(cut))
                rows.append((path.stem, "flipped bit in last.pt", "fell back, identical" if ok else "DIFFERS"))
            print(f"{path.stem}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'config':<{width}}  {'fault':<32}  result")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:<32}  {r[2]}")
    bad = sum(1 for r in rows if r[2] not in ("identical", "fell back, identical"))
    print(f"\n{len(rows) - bad} of {len(rows)} identical")


if __name__ == "__main__":
    main()
