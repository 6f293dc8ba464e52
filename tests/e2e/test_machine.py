"""The run header states the processes that run and the workers / threads chosen from the machine; the worker count
does not change results; `accelerate launch --num_processes 2 --cpu` (which runs one process) is a warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import CONFIGS, ROOT, assert_same_tree, load_checkpoint, read_records, run_cli

QUICK = [CONFIGS / "quickstart.yaml", "stages.teacher.epochs=None", "stages.teacher.iters=6",
         "stages.teacher.eval.every=3", "stages.distill.enabled=false", "experiment.logger.progress=false"]  # fmt: skip


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_auto_workers_and_threads_are_in_the_header_and_do_not_change_results(tmp_path, capsys, four_cores):
    none, auto = tmp_path / "none", tmp_path / "auto"
    assert run_cli(*QUICK, "data.num_workers=0", f"experiment.output_dir={none}") == 0
    capsys.readouterr()
    assert run_cli(*QUICK, "data.num_workers=auto", f"experiment.output_dir={auto}") == 0
    out = capsys.readouterr().out
    header = "'quickstart': 1 process(es) on cpu; 4 usable core(s) for 1 local process(es): 2 data worker(s) (auto)"
    assert header + " and 2 torch thread(s) (auto) per process" in out
    assert torch.get_num_threads() == 2  # the machine's split, with 0 workers too: CPU results depend on threads
    assert_same_tree(load_checkpoint(none)["models"], load_checkpoint(auto)["models"])
    assert read_records(none) == read_records(auto)


@pytest.mark.slow  # the real launcher; the count logic is unit-tested
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's CLI not on PATH")
def test_accelerate_launch_cpu_with_two_processes_warns_that_one_runs(tmp_path):
    cmd = ["accelerate", "launch", "--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "ssl_kd.run", *map(str, QUICK), "stages.teacher.iters=1",
           f"experiment.output_dir={tmp_path / 'r'}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "'quickstart': 1 process(es)" in res.stdout
    warnings = [line for line in res.stderr.splitlines() if line.startswith("WARNING: accelerate launch")]
    assert len(warnings) == 1 and "1 runs" in warnings[0] and "torchrun --nproc_per_node" in warnings[0]
    assert sys.executable
