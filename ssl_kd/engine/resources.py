"""How many DataLoader workers and intra-op threads a process uses, chosen from the machine, and whether the launcher
started fewer processes than it was asked for.

A DataLoader with more workers than cores, beside a main process that keeps every intra-op thread, oversubscribes a
small machine (on a busy 2-core box the quickstart took minutes instead of seconds). The cores this process may use
(`os.sched_getaffinity`, shared evenly by the run's processes on the machine) are split between loader workers and
the main process's intra-op threads: on an accelerator the main process mostly launches kernels, so the workers get
all but one core; on a CPU the two halves compute alike, so they share. `data.num_workers: auto` takes the workers'
share (at most 8); an explicit number is kept. The threads are the main process's share of that split whatever
`num_workers` says, because CPU kernels' results depend on the thread count (the worker count does not change a
result: per-sample randomness is a function of seed, stage, step and index). An explicit `OMP_NUM_THREADS` is kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

AUTO_MAX_WORKERS = 8
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM or taskset limit), else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_processes(num_processes: int, env: Mapping[str, str] | None = None) -> int:
    """The run's processes on this machine (torchrun and accelerate set LOCAL_WORLD_SIZE)."""
    env = os.environ if env is None else env
    try:
        return max(1, int(env["LOCAL_WORLD_SIZE"]))
    except (KeyError, ValueError):
        return max(1, num_processes)


@dataclass(frozen=True)
class Resources:
    workers: int
    threads: int
    cores: int  # usable cores of this process's machine
    processes: int  # the run's processes on this machine
    workers_auto: bool
    threads_auto: bool  # False: OMP_NUM_THREADS chose them

    def describe(self) -> str:
        """One line for the run header."""
        w = f"{self.workers} data worker(s)" + (" (auto)" if self.workers_auto else "")
        t = f"{self.threads} torch thread(s)" + (" (auto)" if self.threads_auto else " (OMP_NUM_THREADS)")
        return f"{self.cores} usable core(s) for {self.processes} local process(es): {w} and {t} per process"


def split_cores(per: int, device_type: str, pipeline: str) -> tuple[int, int]:
    """(workers, threads) for `per` cores of one process: on an accelerator all but one core load data; on a CPU
    loading and computing share them; the device pipeline trains without workers, so its threads keep the cores."""
    workers = min(AUTO_MAX_WORKERS, per - 1 if device_type != "cpu" else per // 2)
    return workers, (max(1, per - workers) if pipeline == "host" else per)


def choose_resources(
    num_workers: int | str, pipeline: str, processes: int, device_type: str = "cpu",
    env: Mapping[str, str] | None = None,
) -> Resources:  # fmt: skip
    """Workers and intra-op threads per process for `data.num_workers` (an int, or "auto"), `data.pipeline` and
    the device's type (see the module docstring)."""
    env = os.environ if env is None else env
    cores = usable_cores()
    auto_workers, threads = split_cores(max(1, cores // max(1, processes)), device_type, pipeline)
    auto = num_workers == "auto"
    workers = auto_workers if auto else int(num_workers)
    threads_auto = not env.get("OMP_NUM_THREADS")
    if not threads_auto:
        threads = torch.get_num_threads()
    return Resources(workers, threads, cores, processes, auto, threads_auto)


def apply_threads(res: Resources) -> None:
    """Give this process its intra-op threads (unless OMP_NUM_THREADS chose them)."""
    if res.threads_auto and torch.get_num_threads() != res.threads:
        torch.set_num_threads(res.threads)


def launch_mismatch(num_processes: int, env: Mapping[str, str] | None = None) -> str | None:
    """A warning when the launcher asked for more processes than run, else None. `accelerate launch --cpu` runs one
    process whatever `--num_processes` says; it then sets MASTER_ADDR / MASTER_PORT (which it does only for more
    than one process) but no WORLD_SIZE."""
    env = os.environ if env is None else env
    for var in _WORLD_SIZE_VARS:
        try:
            asked = int(env[var])
        except (KeyError, ValueError):
            continue
        if asked > num_processes:
            return (
                f"the launcher asked for {asked} processes ({var}={asked}) but {num_processes} run(s): no process "
                f"group was formed; check the launcher's backend (on CPU: torchrun --nproc_per_node {asked} -m "
                f"ssl_kd.run ...)."
            )
        return None
    if num_processes == 1 and "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env:
        return (
            "accelerate launch was asked for several processes but 1 runs: with --cpu it starts one process "
            "whatever --num_processes says; for several CPU processes use torchrun --nproc_per_node N -m ssl_kd.run ..."
        )
    return None


@dataclass(frozen=True)
class Speed:
    """The numeric settings a run uses on its device: `experiment.precision` and `experiment.channels_last` with
    `auto` resolved (`choose_speed`)."""

    precision: str  # accelerate's mixed_precision: "no", "bf16" or "fp16"
    channels_last: bool
    auto: tuple[str, ...] = ()  # the fields `auto` chose

    def describe(self, device_type: str) -> str:
        """One line for the run header: what runs, and which of it `auto` picked (experiment.precision /
        channels_last set it explicitly)."""

        def mark(field: str) -> str:
            return " (auto)" if field in self.auto else ""

        parts = [("fp32" if self.precision == "no" else f"{self.precision} autocast") + mark("precision")]
        if self.channels_last:
            parts.append("channels_last" + mark("channels_last"))
        if device_type == "cuda":
            parts.append("fused optimizers (optimizer.impl: auto)")
        return ", ".join(parts)


def bf16_supported(device_type: str) -> bool:
    """Whether autocast to bf16 runs natively here (Ampere or newer GPUs)."""
    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def choose_speed(precision: str, channels_last: bool | str, device_type: str, bf16: bool | None = None) -> Speed:
    """`auto` = the fastest settings that are safe on the device: on a GPU, bf16 autocast where it is supported
    (no loss scaling needed, so every optimizer strategy works) and NHWC memory for convolutions; on a CPU, fp32 and
    NCHW (bf16 on CPUs is slow without AMX, and CPU results are the ones the reference-equality tests compare)."""
    bf16 = bf16_supported(device_type) if bf16 is None else bf16
    auto = []
    if precision == "auto":
        precision = "bf16" if bf16 else "no"
        auto.append("precision")
    if channels_last == "auto":
        channels_last = device_type == "cuda"
        auto.append("channels_last")
    return Speed(precision, bool(channels_last), tuple(auto))


def device_type_here() -> str:
    """The device a run started here trains on (the CLI puts accelerate on CPU when no GPU is present)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
