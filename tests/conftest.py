"""Shared fixtures: offline, W&B disabled, quiet progress bars, run folders under tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10.npz").exists():
        pytest.skip("../shared/data/cifar10.npz not present")
    return SHARED_DATA


def run_cli(args: list[str]) -> int:
    from ssl_kd.run import main

    return main([str(a) for a in args])
