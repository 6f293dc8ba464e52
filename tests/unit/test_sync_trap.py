"""The sync trap (tests/sync_trap.py) catches each kind of synchronising call, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sync_trap import SyncTrap

x = torch.arange(6.0)
m = x > 2

SYNCS = {
    "item": lambda: x[0].item(),
    "tolist": lambda: x.tolist(),
    "bool": lambda: bool(x[0] > 0),
    "if": lambda: 1 if x[1] else 0,
    "int": lambda: int(x[0]),
    "float": lambda: float(x[0]),
    "index": lambda: [1, 2, 3][torch.tensor(1)],
    "format": lambda: f"{x[0]:.3f}",
    "numpy": lambda: x.numpy(),
    "asarray": lambda: np.asarray(x),
    "contains": lambda: 2.0 in x,
    "max of tensors": lambda: max(x[0], x[1]),
    "nonzero": lambda: x.nonzero(),
    "torch.nonzero": lambda: torch.nonzero(x),
    "argwhere": lambda: torch.argwhere(x),
    "where(cond)": lambda: torch.where(m),
    "mask get": lambda: x[m],
    "mask get in tuple": lambda: x[(m,)],
    "mask set": lambda: x.clone().__setitem__(m, 0.0),
    "index_put_ mask": lambda: x.clone().index_put_((m,), torch.zeros(())),
    "masked_select": lambda: x.masked_select(m),
    "unique": lambda: torch.unique(x),
    "Tensor.unique": lambda: x.unique(),
    "bincount": lambda: torch.bincount(x.long()),
    "repeat_interleave": lambda: torch.repeat_interleave(x.long()),
    "repeat_interleave tensor": lambda: x.repeat_interleave(x.long()),
    "one_hot": lambda: F.one_hot(x.long()),
    "histc": lambda: torch.histc(x),
    "equal": lambda: torch.equal(x, x),
    "allclose": lambda: torch.allclose(x, x),
    "cpu": lambda: x.cpu(),
    "to device": lambda: x.to("cpu"),
    "to device, dtype": lambda: x.to("cpu", torch.float64),
    "to tensor": lambda: x.to(x),
    "tensor on device": lambda: torch.tensor([1.0], device="cpu"),
    "as_tensor on device": lambda: torch.as_tensor(np.ones(2), device="cpu"),
}
FREE = {
    "where(cond, a, b)": lambda: torch.where(m, x, 0.0),
    "Tensor.where": lambda: x.where(m, 0.0),
    "long index": lambda: x[torch.tensor([0, 2])],
    "slice": lambda: x[1:3],
    "int index": lambda: x[1],
    "index_put_ long": lambda: x.clone().index_put_((torch.tensor([1]),), torch.zeros(())),
    "masked_fill": lambda: x.masked_fill(m, 0.0),
    "one_hot sized": lambda: F.one_hot(x.long(), 6),
    "repeat_interleave sized": lambda: x.repeat_interleave(x.long(), output_size=15),
    "repeat_interleave int": lambda: x.repeat_interleave(2),
    "histc range": lambda: torch.histc(x, 4, 0, 6),
    "to dtype": lambda: x.to(torch.float64),
    "to non_blocking": lambda: x.to("cpu", non_blocking=True),
    "scatter_add": lambda: torch.zeros(6).scatter_add_(0, x.long(), x),
    "any": lambda: (x > 1).any(),
    "tensor on host": lambda: torch.tensor([1.0]),
    "shape": lambda: x.shape[0] + len(x),
}


@pytest.mark.parametrize("name", SYNCS)
def test_trap_records_a_sync(name):
    with SyncTrap() as trap:
        SYNCS[name]()
    assert trap.events, f"{name} was not recorded"
    assert "tests/unit/test_sync_trap.py" in trap.events[0].site, trap.events[0]


@pytest.mark.parametrize("name", FREE)
def test_trap_lets_sync_free_calls_pass(name):
    with SyncTrap() as trap:
        FREE[name]()
    assert not trap.events, trap.summary()


def test_trap_ignores_dataloader_work_and_labels_steps():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor([float(i)]).item()  # host-side per-item work

    trap = SyncTrap()
    trap.step = 7
    trap.enter()
    try:
        batches = list(torch.utils.data.DataLoader(Items(), batch_size=2, num_workers=0))
        batches[0].tolist()
    finally:
        trap.exit()
    assert [e.what for e in trap.events] == ["tolist"] and trap.events[0].step == 7
    assert not trap.active and torch.cuda.synchronize.__module__.startswith("torch")


def test_trap_records_explicit_waits_and_puts_them_back():
    originals = (torch.cuda.synchronize, torch.cuda.Stream.synchronize, torch.cuda.Event.synchronize)
    with SyncTrap() as trap:
        assert torch.cuda.synchronize is not originals[0]
        with pytest.raises(Exception):  # noqa: B017  (no GPU here, or a GPU: either way the call is recorded)
            torch.cuda.synchronize()
            raise RuntimeError("synchronized")
    assert [e.what for e in trap.events] == ["torch.cuda.synchronize"]
    assert (torch.cuda.synchronize, torch.cuda.Stream.synchronize, torch.cuda.Event.synchronize) == originals


def test_device_batch_inputs_are_copied_without_a_sync():
    """The device path's per-step host arrays (indices, draws) go to the device non_blocking, on every device."""
    from ssl_kd.data.transfer import array_on_device

    a = np.arange(5)
    with SyncTrap() as trap:
        t = array_on_device(a, torch.device("cpu"))
    assert not trap.events, trap.summary()
    assert torch.equal(t, torch.arange(5))
