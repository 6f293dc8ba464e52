"""Shared fixtures: offline, W&B disabled, run folders and caches under tmp, tiny fake CIFAR files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ssl_kd.engine import Callback

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("SSL_KD_CACHE", tempfile.mkdtemp(prefix="ssl_kd_cache_"))

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` (minutes on a 2-core CPU) run only with SSL_KD_SLOW=1; CI skips them."""
    if os.environ.get("SSL_KD_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set SSL_KD_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10.npz").exists():
        pytest.skip("../shared/data/cifar10.npz not present")
    return SHARED_DATA


def write_fake_npz(
    path: Path, num_classes: int, per_class_train: int, per_class_test: int, size: int = 32, unlabeled: int = 0
) -> Path:
    """Real-format (uint8 NHWC) stand-ins with class-dependent colour so a few steps can learn something."""
    rng = np.random.default_rng(num_classes)

    def make(per_class):
        y = np.repeat(np.arange(num_classes), per_class)
        x = rng.integers(0, 256, size=(len(y), size, size, 3), dtype=np.uint8)
        x[..., 0] = (y[:, None, None] * 255 // max(1, num_classes - 1)).astype(np.uint8)
        return x, y.astype(np.int64)

    x_tr, y_tr = make(per_class_train)
    x_te, y_te = make(per_class_test)
    extra = {}
    if unlabeled:
        extra["x_unlabeled"] = rng.integers(0, 256, size=(unlabeled, size, size, 3), dtype=np.uint8)
        extra["y_unlabeled"] = np.full(unlabeled, -1, dtype=np.int64)
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, **extra)
    return path


def write_synthetic_folder(folder: Path, num_classes: int, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """DM-KD-style generated images: PNGs named class_<c>_seed_<s>_num_<i>.png (class-dependent red channel)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        for i in range(per_class):
            x = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            x[..., 0] = c * 255 // max(1, num_classes - 1)
            Image.fromarray(x).save(folder / f"class_{c}_seed_{seed + c}_num_{i}.png")
    return folder


def write_fake_plants(path: Path, num_classes: int = 51, per_class_train: int = 3, per_class_test: int = 1) -> Path:
    """A stand-in for ../shared/data/ucsc_plants32.npz: the same keys (dates as 'YYYY-MM-DD', a constant location)."""
    write_fake_npz(path, num_classes, per_class_train, per_class_test)
    with np.load(path) as z:
        arrays = dict(z)
    rng = np.random.default_rng(51)
    for split in ("train", "test"):
        n = len(arrays[f"y_{split}"])
        days = rng.integers(0, 365 * 3, n)
        dates = np.datetime64("2019-01-01") + days.astype("timedelta64[D]")
        arrays[f"date_{split}"] = np.array([str(d) for d in dates])
        arrays[f"lat_{split}"] = np.full(n, 36.99)
        arrays[f"lon_{split}"] = np.full(n, -122.06)
    arrays["label_names"] = np.array([f"species_{i}" for i in range(num_classes)])
    np.savez(path, **arrays)
    return path


def write_fake_inat(root: Path, num_classes: int = 4, files_per_class: int = 3, size: int = 8) -> Path:
    """iNaturalist-format JSONs (train_mini.json, val.json) and tiny PNGs under `root`; one image lacks a location.
    The train JSON lists 520 entries (the shipped config's batch is 512) that reuse a few image files."""
    from PIL import Image

    rng = np.random.default_rng(7)
    for split, file, n in (("train_mini", "train_mini.json", 520), ("val", "val.json", 12)):
        images, anns = [], []
        for i in range(n):
            c = i % num_classes
            name = f"{split}/{c:05d}_cls/{i % (num_classes * files_per_class)}.png"
            if not (root / name).exists():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                px[..., 0] = 60 * c
                Image.fromarray(px).save(root / name)
            lat = None if i == 0 else float(10 * c - 20)
            images.append({"id": i, "file_name": name, "latitude": lat, "longitude": float(30 * c),
                           "date": f"2020-0{1 + c}-15 10:30:00+00:00"})  # fmt: skip
            anns.append({"id": i, "image_id": i, "category_id": c})
        cats = [{"id": c, "name": f"cls{c}"} for c in range(num_classes)]
        (root / file).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory) -> Path:
    """A data.root holding tiny cifar10.npz / cifar100.npz and the other shipped configs' datasets (svhn, stl10, the
    plant photos with dates, an iNaturalist folder, a DM-KD-style synthetic folder), so every shipped config can run
    offline."""
    root = tmp_path_factory.mktemp("fake_data")
    write_synthetic_folder(root / "dmkd_cifar100", 100, 2)  # 200 >= the shipped batch size
    write_fake_npz(root / "cifar10.npz", 10, 52, 10)  # >= 512 train images: the linear probe's batch
    write_fake_npz(root / "cifar100.npz", 100, 2, 1)
    write_fake_npz(root / "svhn.npz", 10, 20, 10, unlabeled=40)
    write_fake_npz(root / "stl10.npz", 10, 4, 2, size=96, unlabeled=40)
    write_fake_plants(root / "ucsc_plants32.npz")
    write_fake_inat(root)
    return root


class Crash(Callback):
    """Simulates a crash (Ctrl-C) right after global step `at`; the run then resumes from its last checkpoint."""

    order = 1000

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, runner, terms) -> None:
        if runner.global_step == self.at:
            raise KeyboardInterrupt


def run_cli(*args) -> int:
    from ssl_kd.run import main

    return main([str(a) for a in args])


def run_crashing(monkeypatch, at: int, *args) -> int:
    """run_cli with a simulated crash after global step `at` (exit 130); the callbacks are as before afterwards."""
    import ssl_kd.callbacks as callbacks_mod

    orig = callbacks_mod.experiment_callbacks
    with monkeypatch.context() as m:
        m.setattr(callbacks_mod, "experiment_callbacks", lambda c: [*orig(c), Crash(at)])
        return run_cli(*args)
