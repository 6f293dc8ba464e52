"""Workers and threads chosen from the machine (`data.num_workers: auto`), and the launcher's process count checked
against the processes that run. The expected values are written out by hand per machine shape."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import CONFIGS

from ssl_kd.config import load_yaml
from ssl_kd.data import DataConfig
from ssl_kd.engine.resources import choose_resources, choose_speed, launch_mismatch, local_processes


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))

    return set_cores


@pytest.mark.parametrize(
    ("n_cores", "processes", "device", "pipeline", "workers", "threads"),
    [
        (2, 1, "cpu", "host", 1, 1),  # the 2-core box: one worker, one thread (was 8 workers + every thread)
        (1, 1, "cpu", "host", 0, 1),
        (2, 2, "cpu", "host", 0, 1),  # two processes share the two cores
        (8, 1, "cpu", "host", 4, 4),  # on a CPU loading and computing share the cores
        (64, 1, "cpu", "host", 8, 56),  # at most 8 workers
        (16, 1, "cuda", "host", 8, 8),  # on an accelerator all but one core load, at most 8
        (8, 1, "cuda", "host", 7, 1),
        (16, 4, "cuda", "host", 3, 1),
        (64, 2, "cuda", "host", 8, 24),
        (16, 1, "cuda", "device", 8, 16),  # the device pipeline trains without workers: threads keep the cores
    ],
)
def test_auto_splits_the_usable_cores_per_process(cores, n_cores, processes, device, pipeline, workers, threads):
    cores(n_cores)
    res = choose_resources("auto", pipeline, processes, device, env={})
    assert (res.workers, res.threads, res.cores, res.processes) == (workers, threads, n_cores, processes)
    assert res.workers_auto and res.threads_auto


def test_an_explicit_worker_count_and_omp_num_threads_are_kept(cores):
    cores(2)
    res = choose_resources(6, "host", 1, env={})
    assert (res.workers, res.threads, res.workers_auto) == (6, 1, False)  # threads: the machine's split, not 6's
    res = choose_resources("auto", "host", 1, env={"OMP_NUM_THREADS": "3"})
    assert res.threads == torch.get_num_threads() and not res.threads_auto
    assert "(OMP_NUM_THREADS)" in res.describe()


def test_the_processes_on_this_machine_come_from_the_launcher():
    assert local_processes(4, env={"LOCAL_WORLD_SIZE": "2"}) == 2  # two machines of two
    assert local_processes(3, env={}) == 3


def test_data_num_workers_defaults_to_auto_and_refuses_other_words():
    assert DataConfig().num_workers == "auto"
    assert DataConfig.model_validate({"num_workers": 3}).num_workers == 3
    for bad in (-1, "many"):
        with pytest.raises(ValueError):
            DataConfig.model_validate({"num_workers": bad})


def test_the_configs_no_longer_ask_for_a_fixed_number_of_workers():
    for path in CONFIGS.rglob("*.yaml"):
        workers = (load_yaml(path).get("data") or {}).get("num_workers")
        assert workers in (None, "auto", 0), f"{path}: num_workers {workers}"


@pytest.mark.parametrize(
    ("env", "n", "warns"),
    [
        # what `accelerate launch --num_processes 2 --cpu` sets (accelerate 1.16, utils/launch.py
        # prepare_simple_launcher_cmd_env): MASTER_ADDR / MASTER_PORT only for more than one process, no WORLD_SIZE
        ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, 1, True),
        ({"ACCELERATE_USE_CPU": "True"}, 1, False),  # `accelerate launch --cpu`: one process asked, one runs
        ({"WORLD_SIZE": "2", "MASTER_PORT": "29500"}, 1, True),  # torchrun's 2, but no process group formed
        ({"WORLD_SIZE": "2", "MASTER_PORT": "29500", "ACCELERATE_USE_CPU": "True"}, 2, False),
        ({}, 1, False),
    ],
)
def test_a_launcher_asking_for_more_processes_than_run_is_a_warning(env, n, warns):
    warning = launch_mismatch(n, env)
    assert (warning is not None) == warns
    if warns:
        assert "\n" not in warning and str(n) in warning


@pytest.mark.parametrize(
    ("device", "bf16", "precision", "channels_last", "expected"),
    [
        ("cuda", True, "auto", "auto", ("bf16", True, ("precision", "channels_last"))),
        ("cuda", False, "auto", "auto", ("no", True, ("precision", "channels_last"))),  # pre-Ampere: fp32, no scaler
        ("cpu", False, "auto", "auto", ("no", False, ("precision", "channels_last"))),
        ("cuda", True, "no", False, ("no", False, ())),  # an explicit choice is kept
        ("cpu", False, "bf16", True, ("bf16", True, ())),
        ("cuda", True, "fp16", "auto", ("fp16", True, ("channels_last",))),
    ],
)
def test_auto_numerics_are_the_fastest_safe_settings_of_the_device(device, bf16, precision, channels_last, expected):
    speed = choose_speed(precision, channels_last, device, bf16=bf16)
    assert (speed.precision, speed.channels_last, speed.auto) == expected


def test_the_header_says_which_numerics_auto_chose():
    assert choose_speed("auto", "auto", "cuda", bf16=True).describe("cuda") == (
        "bf16 autocast (auto), channels_last (auto), fused optimizers (optimizer.impl: auto)"
    )
    assert choose_speed("auto", "auto", "cpu", bf16=False).describe("cpu") == "fp32 (auto)"
    assert choose_speed("no", True, "cpu", bf16=False).describe("cpu") == "fp32, channels_last"


def test_numerics_default_to_auto_and_reject_other_words():
    from ssl_kd.config.schema import ExperimentConfig

    exp = ExperimentConfig()
    assert (exp.precision, exp.channels_last) == ("auto", "auto")
    for bad in ({"channels_last": "fast"}, {"precision": "fp8"}, {"precision": "fp32"}):
        with pytest.raises(ValueError):
            ExperimentConfig.model_validate(bad)
