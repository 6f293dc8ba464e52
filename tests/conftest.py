"""Shared fixtures: offline, W&B disabled, run folders and caches under tmp, tiny fake data files. The importable
pieces (fake-data writers, run_cli, the exact-resume check, tiny configs) live in tests/helpers.py."""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import make_fake_data_root, real_data_root

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("SSL_KD_CACHE", tempfile.mkdtemp(prefix="ssl_kd_cache_"))
# One intra-op thread: the tests' models are tiny, so a second thread buys little on a 2-core machine, and when other
# processes share the cores (CI beside a session, parallel sessions) spinning OpenMP threads make each op many times
# slower. SSL_KD_TEST_THREADS sets another count. Subprocesses (kill -9, torchrun) get the same count: a run compared
# bit for bit with one in this process must reduce in the same order.
THREADS = os.environ.setdefault("SSL_KD_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = THREADS
torch.set_num_threads(int(THREADS))


@pytest.fixture(autouse=True, scope="module")
def _frozen_heap():
    """Each stage end calls accelerate's free_memory, a full gc.collect that walks every object of the process: torch's
    import-time objects and the session's fixtures, ~0.2 s a time, hundreds of times in a session. Moving what is
    alive at a module's start into the permanent generation (after collecting the garbage) makes those collects walk
    only the module's own objects; nothing that is garbage is kept. (Only in the tests: a CLI process that froze its
    heap aborted at exit under torchrun, its gloo threads torn down out of order.)"""
    gc.collect()
    gc.freeze()
    yield


TIERS = ("unit", "stages", "e2e")  # seconds of pure functions, a stage's step on tiny models, the CLI and whole runs


def pytest_collection_modifyitems(config, items):
    """The fast tiers first (a broken loss fails in seconds, not after the end-to-end runs; and user models that
    e2e runs register stay out of the unit tests' registry checks). Tests marked `slow` (minutes on a 2-core CPU)
    run only with SSL_KD_SLOW=1; CI skips them."""
    root = Path(__file__).parent

    def tier(item) -> int:
        parts = Path(str(item.path)).relative_to(root).parts
        return TIERS.index(parts[0]) if len(parts) > 1 and parts[0] in TIERS else len(TIERS)

    items.sort(key=tier)  # stable: each file's tests stay together and in order
    if os.environ.get("SSL_KD_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set SSL_KD_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """The folder holding the real CIFAR-10 (helpers.real_data_root: $SSL_KD_DATA, then the shared data folder)."""
    root = real_data_root("cifar10.npz")
    if root is None:
        pytest.skip("real CIFAR-10 (cifar10.npz) is in neither $SSL_KD_DATA nor the shared data folder")
    return root


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory) -> Path:
    """A data.root holding every shipped config's datasets in tiny fake form (helpers.make_fake_data_root)."""
    return make_fake_data_root(tmp_path_factory.mktemp("fake_data"))
