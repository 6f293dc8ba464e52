"""Stopping on request: SIGTERM (SLURM pre-emption, `kill`, a job's time limit) and SIGINT (Ctrl-C) finish the
current step, write a checkpoint and end the run with a line saying how to continue, instead of losing every step
since the last periodic checkpoint. A second Ctrl-C stops at once (KeyboardInterrupt).

Under DDP every rank must stop at the same step, or the others hang in the next collective: the ranks agree on the
request once per step with an all-reduce over a small gloo group (a host-side exchange of one integer; no GPU
synchronisation). DataLoader workers ignore both signals, so a signal sent to the whole process group (a terminal's
Ctrl-C, SLURM's SIGTERM to every task) leaves them serving the step that is still to finish.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

from ssl_kd.errors import RunInterrupted

_HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Install with `with StopRequests(world_size):` around a run; the loop asks `requested()` after each step."""

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size
        self.signum = 0
        self._old: dict[int, Any] = {}
        self._group = None

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for s in _HANDLED:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        if self._group is not None:  # a live gloo group's threads abort the interpreter at exit
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group(self._group)
            self._group = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        name = signal.Signals(signum).name
        print(f"\nssl_kd: {name} received: finishing this step and writing a checkpoint ...", flush=True)

    def requested(self) -> int:
        """The signal number every rank agrees on (0 = go on)."""
        if self.world_size == 1:
            return self.signum
        import torch.distributed as tdist

        group = None  # the default group when it is gloo already (CPU); else a small gloo group of the same ranks
        if tdist.get_backend() != "gloo":
            if self._group is None:
                self._group = tdist.new_group(backend="gloo")
            group = self._group
        flag = torch.tensor([self.signum], dtype=torch.int64)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=group)
        return int(flag.item())

    def stop(self, signum: int, where: str) -> RunInterrupted:
        name = signal.Signals(signum).name
        return RunInterrupted(signum, f"{name}: stopped {where}; a checkpoint was written. Continue with --resume.")


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: the main process decides when to stop (see the module's docstring)."""
    for s in _HANDLED:
        signal.signal(s, signal.SIG_IGN)
