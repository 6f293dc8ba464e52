"""A CPU stand-in for `torch.cuda.set_sync_debug_mode`: a TorchFunctionMode that records every call which, on a GPU,
makes the host wait for the device, with where it came from. Runs on any machine; a test enters it around a
stretch of training steps and asserts it recorded nothing (tests/e2e/test_sync_free.py).

What counts (the synchronising calls of the CUDA backend, torch 2.x):
- reading a value: `item`, `tolist`, `bool()` / `int()` / `float()` / `index()` / `format()` / `repr()` of a
  tensor, `numpy()` / `np.asarray`, `x in t`, `torch.equal`, `allclose`;
- output sizes that depend on values: `nonzero`, `argwhere`, one-argument `torch.where`, boolean-mask indexing (get,
  set, `index_put_`), `masked_select`, `unique`, `bincount` (reads the max), `histc` without a range,
  `repeat_interleave` without `output_size`, `one_hot` without `num_classes`;
- copies between host and device that are not `non_blocking`: `.cpu()`, `.cuda()`, `.to(device)`, `copy_` across
  devices, `torch.tensor(..., device=)`, `torch.as_tensor(..., device=)` (a pageable copy waits for the device; on
  a CPU-only machine every tensor is on the host, so any `.to(device)` is recorded: keep device constants on the
  device instead of copying them per step); `torch.cuda.synchronize`, `Stream.synchronize`, `Event.synchronize`.

Host-side data work is not a GPU sync: calls made under `torch/utils/data` (the DataLoader's fetch, a dataset's
`__getitem__`, its collate) are ignored.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# read a value on the host
_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__complex__", "__format__", "__repr__",
          "__str__", "__array__", "numpy", "__contains__", "equal", "allclose", "_local_scalar_dense"}  # fmt: skip
# output shape from values
_SHAPES = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "_unique", "_unique2", "bincount"}
_INDEX = {"__getitem__", "__setitem__", "index_put_", "index_put", "_index_put_impl_"}
IGNORED_PATHS = ("/torch/utils/data/",)
LIBRARIES = ("/site-packages/", "/dist-packages/")  # host-side data work (DataLoader fetch, a dataset's per-item code)


@dataclass(frozen=True)
class SyncEvent:
    """One synchronising call: what it was, the step it fell in, and where: the first frame in ssl_kd (innermost
    first) and the call site itself."""

    what: str
    step: int | None
    where: str  # "ssl_kd/x.py:123 in fn", or "-" when no ssl_kd frame is on the stack
    site: str  # the innermost frame: "path:line in fn"
    stack: tuple[str, ...]  # every frame, innermost first

    def __str__(self) -> str:
        return f"step {self.step}: {self.what} at {self.where} (call site {self.site})"


def _has_bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple | list) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


SAME_DEVICE = " (same device)"  # a move to the tensor's own device: a no-op, or a host copy on a CPU-only run


def _transfer(func: Any, name: str, args: tuple, kwargs: dict) -> str | None:
    """A host <-> device copy that is not non_blocking, or None. A move to the device the tensor is already on is
    marked SAME_DEVICE: on a GPU it is a no-op, but on a CPU-only run it is where a host tensor would be copied to
    the GPU, so it counts unless an installed library makes it (torch's own code moves tensors to their own
    device, e.g. clip_grad_norm_'s per-device norms)."""
    if name in ("cpu", "cuda"):
        return None if kwargs.get("non_blocking") else f"Tensor.{name}()"
    if name == "to" and args and isinstance(args[0], torch.Tensor):
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
        if device is None or non_blocking:
            return None
        same = args[0].device == device
        return f"Tensor.to({device})" + (SAME_DEVICE if same else "")
    if name == "copy_" and len(args) > 1 and isinstance(args[1], torch.Tensor):
        crosses = args[0].device != args[1].device
        non_blocking = kwargs.get("non_blocking") or (len(args) > 2 and args[2])
        return "copy_ across devices" if crosses and not non_blocking else None
    if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
        return f"torch.{name}(..., device={kwargs['device']})"
    return None


def sync_reason(func: Any, args: tuple, kwargs: dict) -> str | None:
    """Why `func(*args, **kwargs)` would synchronise the host with a GPU, or None."""
    name = getattr(func, "__name__", "")
    if name in _READS or name in _SHAPES:
        return name
    if name == "where" and func is torch.where and len(args) + len(kwargs) == 1:
        return "torch.where(condition)"
    if name in _INDEX:
        index = args[1] if len(args) > 1 else kwargs.get("indices", kwargs.get("index"))
        return f"{name} with a boolean mask" if _has_bool_index(index) else None
    if name == "repeat_interleave":
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        one_arg = len(args) == 1 and "repeats" not in kwargs  # torch.repeat_interleave(repeats)
        tensor_repeats = isinstance(repeats, torch.Tensor) or one_arg
        return "repeat_interleave without output_size" if tensor_repeats and kwargs.get("output_size") is None else None
    if name == "one_hot":
        n = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
        return "one_hot without num_classes" if n == -1 else None
    if name == "histc":
        lo = args[2] if len(args) > 2 else kwargs.get("min", 0)
        hi = args[3] if len(args) > 3 else kwargs.get("max", 0)
        return "histc without a range" if lo == hi else None
    return _transfer(func, name, args, kwargs)


_DISPATCH = ("/torch/overrides.py", "/torch/_tensor.py", "/torch/functional.py", "/torch/_jit_internal.py")


def _frames(skip: int) -> list[tuple[str, int, str]]:
    """The stack from the caller outwards, less torch's dispatch frames at its top (a Python-level Tensor method
    such as `__format__` reaches the mode through `handle_torch_function`)."""
    f = sys._getframe(skip)
    out = []
    while f is not None:
        out.append((f.f_code.co_filename, f.f_lineno, f.f_code.co_name))
        f = f.f_back
    while len(out) > 1 and out[0][0].endswith(_DISPATCH):
        out.pop(0)
    return out


def _short(path: str) -> str:
    cut = path.rfind("/ssl_kd/")
    return path[cut + 1 :] if cut >= 0 else path


class SyncTrap(TorchFunctionMode):
    """Records every synchronising call made while it is entered (`with SyncTrap() as trap:`, or `enter()` /
    `exit()` from two callback hooks). `step` labels the events (a test sets it to the step being run)."""

    def __init__(self, ignored_paths: tuple[str, ...] = IGNORED_PATHS) -> None:
        super().__init__()
        self.ignored_paths = ignored_paths
        self.events: list[SyncEvent] = []
        self.step: int | None = None
        self.active = False
        self._saved: list[tuple[Any, str, Any]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = sync_reason(func, args, kwargs)
        if why is not None:
            self.record(why, skip=2)
        return func(*args, **kwargs)

    def record(self, what: str, skip: int = 1) -> None:
        frames = _frames(skip + 1)
        if any(p in f for f, _, _ in frames for p in self.ignored_paths):
            return
        text = [f"{_short(f)}:{line} in {fn}" for f, line, fn in frames]
        ours = [t for (f, _, _), t in zip(frames, text) if "/ssl_kd/" in f and "/tests/" not in f]
        if what.endswith(SAME_DEVICE) and any(lib in frames[0][0] for lib in LIBRARIES):
            return  # torch's or accelerate's own move of a tensor to its own device
        self.events.append(SyncEvent(what, self.step, ours[0] if ours else "-", text[0], tuple(text)))

    # explicit waits for the device (not torch functions: patched while the trap is entered)
    _WAITS = ((torch.cuda, "synchronize"), (torch.cuda.Stream, "synchronize"), (torch.cuda.Event, "synchronize"))

    def __enter__(self) -> SyncTrap:
        self.active = True
        self._saved = [(owner, name, getattr(owner, name)) for owner, name in self._WAITS]
        for owner, name, original in self._saved:
            setattr(owner, name, self._recording(f"{getattr(owner, '__name__', owner)}.{name}", original))
        return super().__enter__()

    def _recording(self, what: str, original):
        def wait(*a, **k):
            self.record(what)
            return original(*a, **k)

        return wait

    def __exit__(self, *exc) -> None:
        for owner, name, original in self._saved:
            setattr(owner, name, original)
        self.active = False
        return super().__exit__(*exc)

    enter = __enter__

    def exit(self) -> None:
        if self.active:
            self.__exit__(None, None, None)

    def summary(self, events: list[SyncEvent] | None = None) -> str:
        """One line per (what, where), with its count: what a failing test prints."""
        counts = Counter((e.what, e.where, e.site) for e in (self.events if events is None else events))
        return "\n".join(f"{n:4d} x {what} at {where} (call site {site})" for (what, where, site), n in counts.items())
