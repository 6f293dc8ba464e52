"""Fingerprints of every shipped config's short run: a guard for refactors that must change no number.

Each config runs 2 steps per stage on tiny fake data in the real file formats (the shipped-config test's
overrides, at the shipped model sizes), then the final weights of every model and every metrics record (less
wall-clock fields) are hashed. Run it before and after a change and compare:

    python benchmarks/config_fingerprints.py --out before.json
    python benchmarks/config_fingerprints.py --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("time", "sec", "it_s", "elapsed", "throughput", "eta")


def _helpers():
    """The fake-data writers and tiny overrides of the test suite (where the tests keep them)."""
    for sub in ("tests", "tests/e2e"):
        sys.path.insert(0, str(ROOT / sub))
    try:
        from helpers import make_fake_data_root, shipped_configs, tiny_overrides  # noqa: PLC0415
    except ImportError:  # the layout before the tests were tiered
        import conftest  # noqa: PLC0415
        from test_shipped_configs import SHIPPED, tiny_overrides  # noqa: PLC0415

        def make_fake_data_root(root: Path) -> Path:
            conftest.write_synthetic_folder(root / "dmkd_cifar100", 100, 2)
            conftest.write_fake_npz(root / "cifar10.npz", 10, 52, 10)
            conftest.write_fake_npz(root / "cifar100.npz", 100, 2, 1)
            conftest.write_fake_npz(root / "svhn.npz", 10, 20, 10, unlabeled=40)
            conftest.write_fake_npz(root / "stl10.npz", 10, 4, 2, size=96, unlabeled=40)
            conftest.write_fake_plants(root / "ucsc_plants32.npz")
            conftest.write_fake_inat(root)
            return root

        def shipped_configs():
            return SHIPPED

    return make_fake_data_root, shipped_configs, tiny_overrides


def fingerprint(out: Path) -> dict[str, str]:
    import torch

    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    fp = {}
    for name, sd in sorted(ckpt["models"].items()):
        h = hashlib.sha256()
        for k in sorted(sd):
            v = sd[k]
            h.update(k.encode())
            if torch.is_tensor(v):
                h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        fp[f"model/{name}"] = h.hexdigest()[:16]
    recs = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs.append({k: v for k, v in r.items() if not any(t in k for t in TIMING)})
    fp["metrics"] = hashlib.sha256(json.dumps(recs, sort_keys=True).encode()).hexdigest()[:16]
    return fp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", type=Path, default=None)
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="substring filter on config paths (repeatable: a config matching any runs)",
    )
    args = ap.parse_args()
    import os

    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.path.insert(0, str(ROOT))
    make_fake_data_root, shipped_configs, tiny_overrides = _helpers()
    from ssl_kd.run import main as run_main

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_fake_data_root(Path(tmp) / "data")
        for path in shipped_configs():
            if args.only and not any(o in str(path) for o in args.only):
                continue
            name = str(path.relative_to(ROOT / "configs").with_suffix(""))
            out = Path(tmp) / "runs" / name
            t0 = time.time()
            rc = run_main([str(path), *tiny_overrides(path, data), f"experiment.output_dir={out}",
                           "experiment.logger.progress=false"])  # fmt: skip
            result[name] = fingerprint(out) if rc == 0 else {"rc": rc}
            print(f"{name:<45} {time.time() - t0:6.1f}s {result[name]}", flush=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(args.compare.read_text())
        # with --only, the configs not run are not compared
        keys = set(result) | (set() if args.only else {k for k in before if not k.startswith("_")})
        diff = [k for k in sorted(keys) if before.get(k) != result.get(k)]
        print(f"{len(result) - len(diff)} of {len(result)} configs identical; differ: {diff or 'none'}")
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
