"""On a GPU the host path's views leave the loader as uint8 and are normalised on the batch, on the device: a quarter
of the bytes to pin and copy. The values must be those the per-image float path makes, bit for bit; here both are
compared on CPU, image by image and through a whole training run."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers import load_checkpoint, run_cli, ssl_digits_config
from sync_trap import SyncTrap
from torch.utils.data import default_collate

import ssl_kd.engine.scoring as scoring
import ssl_kd.engine.services as services
from ssl_kd.data import ViewDataset
from ssl_kd.data.augment import StrongTransform, Transform, WeakTransform
from ssl_kd.data.config import AugmentConfig
from ssl_kd.data.containers import ImageSet


def _images() -> np.ndarray:
    """Random images, with constant and two-level ones among them (edge cases of the point ops)."""
    x = np.random.default_rng(0).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    x[:4] = np.array([0, 255, 17, 128], np.uint8)[:, None, None, None]
    x[4:8] = np.where(np.random.default_rng(1).random((4, 32, 32, 1)) < 0.5, 3, 250).astype(np.uint8)
    return x


@pytest.mark.parametrize("order", ["after", "before"])
def test_uint8_views_normalised_on_the_batch_equal_the_per_image_floats(order):
    x = _images()
    images = ImageSet(x, np.zeros(len(x), np.int64))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    aug = AugmentConfig.model_validate({"strong": {"order": order}})
    views = {
        "weak": WeakTransform(mean, std, aug.weak),
        "strong": StrongTransform(mean, std, aug.weak, aug.strong),
        "test": Transform(mean, std),
    }
    keys = [(i, 1000 + 7 * i) for i in range(len(x))]
    plain = default_collate([ViewDataset(images, views)[k] for k in keys])
    deferred = ViewDataset(images, views, defer_normalize=True)
    raw = default_collate([deferred[k] for k in keys])
    assert all(raw[k].dtype == torch.uint8 for k in views)
    done = deferred.finish(raw)
    for k in views:
        assert done[k].dtype == torch.float32 and torch.equal(done[k], plain[k]), k
    assert "_on_device" not in pickle.loads(pickle.dumps(views["weak"])).__dict__  # workers get host constants
    copies = []
    for t in views.values():  # the constants went to the batch's device once: later batches copy nothing
        t._host_constants = lambda t=t: copies.append(t) or type(t)._host_constants(t)
    with SyncTrap() as trap:
        again = deferred.finish(raw)
    assert not copies
    assert not trap.events and all(torch.equal(again[k], done[k]) for k in views), trap.summary()
    assert torch.equal(done["y"], plain["y"]) and torch.equal(done["idx"], plain["idx"])


def test_a_run_with_uint8_views_is_the_run_with_float_views(tmp_path, monkeypatch):
    cfg = ssl_digits_config(tmp_path / "c.yaml", "fullmatch", iters=3, eval_every=3, log_every=1)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'float'}") == 0

    class Deferring(ViewDataset):  # what a GPU gets
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **{**kwargs, "defer_normalize": True})
            assert self._finish

    deferring = Deferring
    monkeypatch.setattr(services, "ViewDataset", deferring)
    monkeypatch.setattr(scoring, "ViewDataset", deferring)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'uint8'}") == 0
    a, b = (load_checkpoint(tmp_path / run)["models"]["net"] for run in ("float", "uint8"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
