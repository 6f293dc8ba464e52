"""The device-resident twin of `ViewDataset`: the images live on the device as one uint8 tensor, and a whole batch
of views is made there in a few kernels (`device_augment.py`). No DataLoader workers, no per-image host work."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ssl_kd.data.containers import ImageSet
from ssl_kd.data.device_augment import DeviceTransform, uniforms
from ssl_kd.data.hashing import mix_seeds


class DeviceImages:
    """An ImageSet materialised on a device: images (N, 3, H, W) uint8, targets (N,) int64, fields (N, ...)."""

    def __init__(self, images: ImageSet, device: torch.device) -> None:
        n = len(images)
        if images.images is not None:
            hwc = np.asarray(images.images)
        else:  # folders, concatenations and views decode image by image, once
            hwc = np.stack([images.image(i) for i in range(n)]) if n else np.zeros((0, 1, 1, 3), np.uint8)
        self.images = torch.from_numpy(np.ascontiguousarray(hwc)).to(device).permute(0, 3, 1, 2).contiguous()
        self.targets = torch.as_tensor(images.targets, dtype=torch.int64).to(device)
        self.fields = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in images.fields.items()}
        self.device = device

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on the device without blocking the host (pinned staging on CUDA; on the CPU the array's
    own memory, as before). One code path on every device, so the CPU tests' sync trap sees what a GPU runs."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class DeviceViewDataset:
    """`ds.batch(positions, seeds) -> {view: (B, 3, H, W) float, "y", "idx", field, ...}` on the device.

    The same contract as `ViewDataset` for a whole batch: position p is sample `indices[p]`, view k of a sample is
    drawn from `mix_seed(seed, k)`, so a sample's views depend only on (image, seed).
    """

    batched = True  # the engine calls `batch` per step instead of running a DataLoader

    def __init__(
        self, images: DeviceImages, views: Mapping[str, DeviceTransform], indices: np.ndarray | None = None
    ) -> None:
        clash = [k for k in views if k in ("y", "idx") or k in images.fields]
        if clash:
            raise ValueError(f"view names {clash} clash with the batch keys y, idx or the dataset's fields")
        self.images = images
        self.views = dict(views)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    def batch(self, positions: np.ndarray, seeds: np.ndarray) -> dict[str, torch.Tensor]:
        idx_host = positions if self.indices is None else self.indices[positions]
        draws = [uniforms(mix_seeds(seeds, k), t.num_draws) for k, t in enumerate(self.views.values())]
        dev = self.images.device
        idx = to_device(idx_host.astype(np.int64), dev)
        u = to_device(np.concatenate(draws, axis=1), dev) if draws else None
        raw = self.images.images.index_select(0, idx)
        out: dict[str, torch.Tensor] = {}
        start = 0
        for name, t in self.views.items():
            out[name] = t(raw, u[:, start : start + t.num_draws])
            start += t.num_draws
        out["y"] = self.images.targets.index_select(0, idx)
        out["idx"] = idx
        for name, value in self.images.fields.items():
            out[name] = value.index_select(0, idx)
        return out
