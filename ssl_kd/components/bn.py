"""BatchNorm running statistics held fixed around a forward pass (USB's `bn_controller.freeze_bn / unfreeze_bn`,
semilearn 0.3.2 core/utils/misc.py): the pass normalises with its batch statistics in train mode, but the running
mean / variance / count are put back afterwards, so only the labelled pass moves them (Pseudo-Label, Pi-model,
Mean Teacher). Device copies only, no host sync."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def frozen_bn_stats(*models: nn.Module, enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    saved = [
        (buf, buf.clone())
        for model in models
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]
    try:
        yield
    finally:
        for buf, old in saved:
            buf.data = old  # as USB: swap the data, no in-place write (the pass's graph saved the buffers)
