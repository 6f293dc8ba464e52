"""The device-resident twin of `ViewDataset`: the images live on the device as one uint8 tensor, and a whole batch
of views is made there in a few kernels (`device_augment.py`). No DataLoader workers, no per-image host work."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from ssl_kd.data.containers import ImageSet
from ssl_kd.data.device_augment import DeviceTransform, uniforms
from ssl_kd.data.hashing import mix_seeds
from ssl_kd.data.transfer import array_on_device

log = logging.getLogger("ssl_kd.data")


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


def make_views(
    images: torch.Tensor, views: Mapping[str, DeviceTransform], idx: torch.Tensor, u: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The views of a batch: gather its images, then each view's transform on its columns of the draws."""
    raw = images.index_select(0, idx)
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, t in views.items():
        out[name] = t(raw, u[:, start : start + t.num_draws])
        start += t.num_draws
    return out


class CapturedViews:
    """`make_views` for one batch size as a CUDA graph: static index and draw buffers, the gather + augmentation +
    normalisation captured once and replayed per batch (a few hundred small kernels launched as one), the outputs
    cloned (the next replay overwrites them). The same kernels on the same inputs as eager: the same bits.

    CUDA only; `capture` returns None (and logs one note) where capturing fails, and the caller runs eagerly."""

    def __init__(self, images: torch.Tensor, views: Mapping[str, DeviceTransform], batch_size: int) -> None:
        dev = images.device
        self.images, self.views = images, dict(views)
        self.idx = torch.zeros(batch_size, dtype=torch.int64, device=dev)
        self.u = torch.zeros(batch_size, sum(t.num_draws for t in self.views.values()), dtype=torch.float64, device=dev)
        side = torch.cuda.Stream(dev)  # warm-up off the capture: the transforms' constants are copied here, once
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                make_views(self.images, self.views, self.idx, self.u)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # other threads may use CUDA meanwhile
            self.out = make_views(self.images, self.views, self.idx, self.u)

    @classmethod
    def capture(
        cls, images: torch.Tensor, views: Mapping[str, DeviceTransform], batch_size: int
    ) -> CapturedViews | None:
        try:
            return cls(images, views, batch_size)
        except Exception as e:  # noqa: BLE001 - any failure to capture falls back to the eager path
            log.warning("data.device_graph: capturing the device views failed (%s: %s); running them eagerly",
                        type(e).__name__, e)  # fmt: skip
            return None

    def __call__(self, idx: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        self.idx.copy_(idx, non_blocking=True)
        self.u.copy_(u, non_blocking=True)
        self.graph.replay()
        return {k: v.clone() for k, v in self.out.items()}


class DeviceViewDataset:
    """`ds.batch(positions, seeds) -> {view: (B, 3, H, W) float, "y", "idx", field, ...}` on the device.

    The same contract as `ViewDataset` for a whole batch: position p is sample `indices[p]`, view k of a sample is
    drawn from `mix_seed(seed, k)`, so a sample's views depend only on (image, seed).
    """

    batched = True  # the engine calls `batch` per step instead of running a DataLoader

    MAX_GRAPHS = 4  # batch sizes captured at most (a stream's full and last batches); others run eagerly

    def __init__(
        self,
        images: DeviceImages,
        views: Mapping[str, DeviceTransform],
        indices: np.ndarray | None = None,
        graph: bool | str = "auto",
    ) -> None:
        clash = [k for k in views if k in ("y", "idx") or k in images.fields]
        if clash:
            raise ValueError(f"view names {clash} clash with the batch keys y, idx or the dataset's fields")
        self.images = images
        self.views = dict(views)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        # `data.device_graph`: auto / true = CUDA graphs on a CUDA device; never on other devices
        self.graph = graph in ("auto", True) and images.device.type == "cuda"
        self._graphs: dict[int, CapturedViews | None] = {}

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    def views_of(self, idx: torch.Tensor, u: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The views of the samples `idx` (on the device) with draws `u`: replayed from a CUDA graph per batch size
        where `graph` is on, else eagerly."""
        b = int(idx.shape[0])
        if self.graph and u is not None and (b in self._graphs or len(self._graphs) < self.MAX_GRAPHS):
            if b not in self._graphs:
                self._graphs[b] = CapturedViews.capture(self.images.images, self.views, b)
                if self._graphs[b] is None:
                    self.graph = False  # one note, then eager for good
            if self._graphs.get(b) is not None:
                return self._graphs[b](idx, u)
        return make_views(self.images.images, self.views, idx, u)

    def batch(self, positions: np.ndarray, seeds: np.ndarray) -> dict[str, torch.Tensor]:
        idx_host = positions if self.indices is None else self.indices[positions]
        draws = [uniforms(mix_seeds(seeds, k), t.num_draws) for k, t in enumerate(self.views.values())]
        dev = self.images.device
        idx = array_on_device(idx_host.astype(np.int64), dev)
        u = array_on_device(np.concatenate(draws, axis=1), dev) if draws else None
        out = self.views_of(idx, u)
        out["y"] = self.images.targets.index_select(0, idx)
        out["idx"] = idx
        for name, value in self.images.fields.items():
            out[name] = value.index_select(0, idx)
        return out
