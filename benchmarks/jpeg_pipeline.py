"""JPEG input pipeline: ssl_kd's host path (`data.transform`) against torchvision's standard one, on the same files.

The standard pipeline is what mdistiller, torchdistill and timm's defaults use: `ImageFolder` + PIL +
`RandomResizedCrop(size)` / `RandomHorizontalFlip()` / `ToTensor()` / `Normalize(ImageNet)` for training, and
`Resize(size / 0.875)` / `CenterCrop(size)` / `ToTensor()` / `Normalize` for evaluation. Both run in a DataLoader with
the same worker count, batch size and files; rounds alternate (ours, theirs, ours, ...) and the result is the median
of the per-round ratios, so a machine shared with other work moves both sides of a ratio alike. Throughput is counted
from the first batch on (worker start-up excluded) and reported per worker.

    python benchmarks/jpeg_pipeline.py [--data DIR] [--workers 1] [--rounds 5] [--images 300] [--size 224]
    python benchmarks/jpeg_pipeline.py --float-in-worker   # normalise in the worker (the runner does it on the device)
    python benchmarks/jpeg_pipeline.py --index-tree 100000   # index time of a synthetic tree in /tmp, cold / warm
    python benchmarks/jpeg_pipeline.py --device cuda --batch 256 --images 2560   # the device path
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, whatever is installed

from ssl_kd.data import DataConfig, ViewDataset, build_transform, load_dataset  # noqa: E402
from ssl_kd.data.hashing import mix_seed  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_sets(root: Path, size: int):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
    train = ImageFolder(str(root / "train"), T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm]))
    val = ImageFolder(str(root / "val"), T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size), *norm]))
    return train, val


class FloatInWorker:
    """A CropTransform called whole in the worker (normalised floats out), as the host path shipped crops before it
    deferred the normalisation to the batch on the device (`ViewDataset.finish`)."""

    def __init__(self, t) -> None:
        self.t = t

    def __call__(self, img, seed: int = 0) -> torch.Tensor:
        return self.t(img, seed)


def ssl_kd_sets(root: Path, size: int, fast_decode: bool, float_in_worker: bool = False):
    transform = {"size": size, "fast_decode": fast_decode}
    cfg = DataConfig(dataset="image_folder", path=str(root), normalize="imagenet", transform=transform)
    bundle = load_dataset(cfg)
    wrap = FloatInWorker if float_in_worker else (lambda t: t)  # default: uint8 crops, as the runner loads them
    train = ViewDataset(bundle.train, {"x": wrap(build_transform("weak", bundle, cfg.augment))})
    val = ViewDataset(bundle.test, {"x": wrap(build_transform("test", bundle, cfg.augment))})
    return train, val


def images_per_s(dataset, n: int, batch: int, workers: int, keyed: bool, seed: int) -> float:
    """Images/s of a DataLoader over n samples (cycling the dataset), timed from its first batch."""
    rng = np.random.default_rng(seed)
    order = rng.integers(0, len(dataset), n + batch).tolist()
    if keyed:  # ViewDataset: (position, per-sample seed), as the engine's samplers give it
        order = [(p, mix_seed(seed, i)) for i, p in enumerate(order)]
    batches = [order[s : s + batch] for s in range(0, len(order), batch)]
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=False, prefetch_factor=4 if workers else None
    )
    it = iter(loader)
    next(it)  # start-up and the first batch are not counted
    t0, count = time.perf_counter(), 0
    for b in it:
        count += len(b["x"] if isinstance(b, dict) else b[0])
    return count / (time.perf_counter() - t0)


def pipelines(args) -> None:
    root = Path(args.data)
    tv_train, tv_val = torchvision_sets(root, args.size)
    ours_train, ours_val = ssl_kd_sets(root, args.size, not args.full_decode, args.float_in_worker)
    rows = {"train": (ours_train, tv_train), "eval": (ours_val, tv_val)}
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    for r in range(args.rounds):
        for kind, (ours, theirs) in rows.items():
            a = images_per_s(ours, args.images, args.batch, args.workers, True, r)
            b = images_per_s(theirs, args.images, args.batch, args.workers, False, r)
            res[kind].append((a, b))
            print(f"round {r} {kind:5s}: ssl_kd {a:7.0f} img/s  torchvision {b:7.0f} img/s  ratio {a / b:5.2f}")
    w = max(1, args.workers)
    print(
        f"\n{len(tv_train)} train / {len(tv_val)} val files under {root}, output {args.size} px, {args.workers} "
        f"worker(s), batch {args.batch}, {args.rounds} rounds of {args.images} images, torch threads "
        f"{torch.get_num_threads()}, fast_decode {not args.full_decode}, "
        f"ssl_kd output {'float (in the worker)' if args.float_in_worker else 'uint8 (normalised on the device)'}"
    )
    print("| pipeline | ssl_kd img/s per worker | torchvision img/s per worker | median paired ratio |")
    print("|---|---|---|---|")
    for kind, pairs in res.items():
        a = statistics.median(p[0] for p in pairs) / w
        b = statistics.median(p[1] for p in pairs) / w
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        print(f"| {kind} | {a:.0f} | {b:.0f} | {ratio:.2f}x |")


def device_path(args) -> None:
    """Images/s of the device path (batched decode_jpeg + roi_align crops + flip + normalise) on `args.device`, the
    file bytes read on the host as in training."""
    from ssl_kd.data.device_jpeg import DeviceCrops
    from ssl_kd.data.hashing import mix_seeds

    dev = torch.device(args.device)
    cfg = DataConfig(dataset="image_folder", path=args.data, normalize="imagenet", transform={"size": args.size})
    bundle = load_dataset(cfg)
    crops = DeviceCrops(build_transform("weak", bundle, cfg.augment), dev)
    n, b = len(bundle.train), args.batch
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rates = []
    for r in range(args.rounds + 1):  # round 0 warms up
        sync()
        t0 = time.perf_counter()
        for s in range(0, args.images, b):
            pos = (np.arange(s, s + b) + r * 7) % n
            crops([bundle.train.image(int(i)) for i in pos], mix_seeds(r, pos).tolist())
        sync()
        rates.append(args.images / (time.perf_counter() - t0))
    print(
        f"device path on {dev}: {statistics.median(rates[1:]):.0f} img/s (batch {b}, {args.size} px, decode + crop"
        f" + flip + normalise, median of {args.rounds} rounds of {args.images})"
    )


def index_tree(n: int) -> None:
    """Cold (listing the tree) and warm (cache hit) index times of a synthetic class-folder tree of n empty files."""
    from ssl_kd.data.sources.image_folder import scan_image_folder

    base = Path(tempfile.mkdtemp(prefix="ssl_kd_index_bench_"))
    cache = Path(tempfile.mkdtemp(prefix="ssl_kd_index_cache_"))
    old = os.environ.get("SSL_KD_CACHE")
    os.environ["SSL_KD_CACHE"] = str(cache)
    try:
        classes, per = max(1, n // 100), 100
        t0 = time.perf_counter()
        for split, count in (("train", per), ("val", max(1, per // 10))):
            for c in range(classes):
                d = base / split / f"n{c:08d}"
                d.mkdir(parents=True)
                for i in range(count):
                    (d / f"n{c:08d}_{i}.JPEG").touch()
        made = time.perf_counter() - t0
        total = classes * (per + max(1, per // 10))
        times = {}
        for label, use in (("no cache", False), ("cold (list + write cache)", True), ("warm (cache hit)", True)):
            t0 = time.perf_counter()
            (tr, _), (va, _), _ = scan_image_folder(base, use)
            times[label] = time.perf_counter() - t0
        from torchvision.datasets.folder import make_dataset

        t0 = time.perf_counter()
        make_dataset(str(base / "train"), {f"n{c:08d}": c for c in range(classes)}, extensions=(".jpeg",))
        make_dataset(str(base / "val"), {f"n{c:08d}": c for c in range(classes)}, extensions=(".jpeg",))
        times["torchvision ImageFolder scan"] = time.perf_counter() - t0
        print(f"{total} files ({len(tr)} train + {len(va)} val) in {classes} classes, made in {made:.1f} s")
        for k, v in times.items():
            print(f"  {k:30s} {v:7.3f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        if old is None:
            os.environ.pop("SSL_KD_CACHE", None)
        else:
            os.environ["SSL_KD_CACHE"] = old


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("SSL_KD_DATA", ROOT.parent / "shared" / "data")) / "plants_jpeg"
    p.add_argument("--data", default=str(data), help="an ImageFolder tree with train/ and val/")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=300, help="images per round and pipeline")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--full-decode", action="store_true", help="ssl_kd with fast_decode: false")
    p.add_argument(
        "--float-in-worker",
        action="store_true",
        help="ssl_kd's crops normalised in the worker (before the runner deferred it to the device)",
    )
    p.add_argument("--index-tree", type=int, default=0, metavar="N", help="time indexing N synthetic files instead")
    p.add_argument("--device", default=None, help="time the device path (e.g. cuda) instead")
    args = p.parse_args()
    if args.index_tree:
        index_tree(args.index_tree)
    elif args.device:
        device_path(args)
    else:
        pipelines(args)


if __name__ == "__main__":
    main()
