"""The training streams' batches on the device, one micro-batch ahead of the step that uses them.

The loop takes micro-batch t (`take`), launches its step, and then asks for micro-batch t+1 (`prefetch`) while the
device still works on step t. On CUDA the next batch's work — the host path's copy of a pinned batch, the device
path's sampling and augmentation kernels, the large-image path's normalisation — is issued on a side stream, so it
overlaps the step's kernels on the compute stream; the compute stream waits for it with an event when it takes the
batch (a device-side wait, not a host sync), and the batch's memory is marked as used by the compute stream so the
caching allocator cannot hand it out early. On a CPU only the order of the host work changes: batches are a pure
function of (seed, stream position), so results are identical with or without the prefetch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from accelerate.utils import send_to_device

from ssl_kd.engine.streams import finish_batch


class DeviceFeed:
    """`take()` -> the next micro-batch of every stream, on the device; `prefetch()` starts the one after it.

    `limit` is how many micro-batches the stage still needs: the feed never draws past it (a stream would
    otherwise make, and a DataLoader decode, one batch the stage never uses)."""

    def __init__(
        self, iters: Mapping[str, Iterator], datasets: Mapping[str, Any], device: torch.device, limit: int
    ) -> None:
        self.iters = dict(iters)
        self.datasets = dict(datasets)
        self.device = device
        self.left = int(limit)  # micro-batches not yet drawn from the streams
        self._ready: tuple[dict[str, Any], torch.cuda.Event | None] | None = None
        self.stream = None
        if device.type == "cuda":
            self.stream = torch.cuda.Stream(device)
            # the side stream starts after everything already queued (e.g. the device copy of the training images)
            self.stream.wait_stream(torch.cuda.current_stream(device))

    def prefetch(self) -> None:
        """Draw, move and finish the next micro-batch now (on the side stream on CUDA), if the stage needs one."""
        if self._ready is not None or self.left <= 0:
            return
        side = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with side:
            raw = {k: next(it) for k, it in self.iters.items()}
            batch = send_to_device(raw, self.device, non_blocking=True)
            batch = {k: finish_batch(self.datasets[k], b) for k, b in batch.items()}
            event = None
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
        self.left -= 1
        self._ready = (batch, event)

    def take(self) -> dict[str, Any]:
        """The next micro-batch, ready for the compute stream."""
        self.prefetch()  # the first one, or when the loop did not prefetch
        if self._ready is None:
            raise RuntimeError("the stage asked for more batches than its length")
        batch, event = self._ready
        self._ready = None
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for t in _tensors(batch):
                if t.device.type == "cuda":
                    t.record_stream(compute)
        return batch


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, Mapping):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
