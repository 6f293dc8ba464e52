"""Small host tensors (drawn indices, permutations, augmentation draws) onto the device without making the host wait."""

from __future__ import annotations

import numpy as np
import torch


def on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`: staged in pinned memory and copied non_blocking from a CPU to a GPU (a pageable copy would make
    the host wait); the same call on every device, so the CPU tests' sync trap sees the call a GPU runs."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def array_on_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small NumPy array on `device`, as `on_device`."""
    return on_device(torch.from_numpy(np.ascontiguousarray(a)), device)
