"""Shared fixtures: offline, W&B disabled, run folders and caches under tmp, tiny fake CIFAR files."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory) -> Path:
    """A data.root holding tiny cifar10.npz / cifar100.npz (and a DM-KD-style synthetic folder), so every shipped
    config can run offline."""
    root = tmp_path_factory.mktemp("fake_data")
    write_synthetic_folder(root / "dmkd_cifar100", 100, 2)  # 200 >= the shipped batch size
    write_fake_npz(root / "cifar10.npz", 10, 52, 10)  # >= 512 train images: the linear probe's batch
    write_fake_npz(root / "cifar100.npz", 100, 2, 1)
    write_fake_npz(root / "svhn.npz", 10, 20, 10, unlabeled=40)
    write_fake_npz(root / "stl10.npz", 10, 4, 2, size=96, unlabeled=40)
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
