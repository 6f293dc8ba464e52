"""DOT in runs: config errors name the YAML path, the runner's loss groups reach the optimizer, DDP matches one
process, gradient accumulation matches one batch."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import CONFIGS, run_cli, torchrun_cli

QUICK = CONFIGS / "quickstart.yaml"


SHORT = ["stages.teacher.epochs=1", "stages.distill.epochs=1", "experiment.logger.progress=false"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["stages.teacher.optimizer.name=dot", "stages.teacher.optimizer.nesterov=false"],
         "stages.teacher: optimizer.loss_groups.distill"),
        (["stages.distill.optimizer.name=dot"], "stages.distill.optimizer.nesterov"),
        (["stages.distill.optimizer.name=dot", "stages.distill.optimizer.nesterov=false",
          "stages.distill.optimizer.loss_groups={task: [cee]}"], "'cee' is not a loss term"),
    ],
)  # fmt: skip
def test_dot_config_errors_name_the_yaml_path(tmp_path, capsys, args, needle):
    assert run_cli(QUICK, *SHORT, *args, f"experiment.output_dir={tmp_path / 'x'}", "--dry-run") == 2
    assert needle in capsys.readouterr().err


def _student(out):
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["models"]["student"]


def test_runner_loss_groups_reach_dot(tmp_path):
    """Through the runner, DOT with delta = 0 must train like SGD on ce + kd (the groups are split and handed over
    correctly); with delta > 0 it must differ."""
    common = [*SHORT, "stages.distill.optimizer.nesterov=false", "stages.distill.scheduler.name=constant"]
    runs = {}
    for name, extra in {
        "sgd": [],
        "dot0": ["stages.distill.optimizer.name=dot", "stages.distill.optimizer.delta=0.0"],
        "dot": ["stages.distill.optimizer.name=dot"],
    }.items():
        assert run_cli(QUICK, *common, *extra, f"experiment.output_dir={tmp_path / name}") == 0
        runs[name] = _student(tmp_path / name)
    for k, v in runs["sgd"].items():
        if v.is_floating_point():
            torch.testing.assert_close(runs["dot0"][k], v, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(runs["dot"][k], v) for k, v in runs["sgd"].items() if v.is_floating_point())


# a DOT student on a fixed MLP teacher, one epoch; both tests below compare against its one-process run
DOT_ARGS = ["stages.teacher.enabled=false", "models.teacher.arch=mlp", "models.teacher.kwargs={hidden: 32, depth: 1}",
            "stages.distill.epochs=1", "stages.distill.augment=none", "stages.distill.optimizer.name=dot",
            "stages.distill.optimizer.nesterov=false", "experiment.logger.progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def dot_one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("dot") / "one"
    assert run_cli(QUICK, *DOT_ARGS, f"experiment.output_dir={out}") == 0
    return out


@pytest.mark.slow  # torchrun; DDP = 1 process is held in CI by test_ddp.py
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_dot_under_ddp_matches_one_process(tmp_path, dot_one_process):
    """Loss groups under DDP: each group's gradient is all-reduced by hand, so 2 processes train like 1."""
    args = DOT_ARGS
    one, two = dot_one_process, tmp_path / "two"
    res = torchrun_cli(str(QUICK), *args, f"experiment.output_dir={two}", port=29521)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _student(one), _student(two)
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5)


def test_dot_with_gradient_accumulation_matches_one_batch(tmp_path, dot_one_process):
    """Each group's gradient is summed over the micro-batches before DOT sees it: accumulation = one big batch."""
    args = DOT_ARGS
    one, acc = dot_one_process, tmp_path / "acc"
    assert run_cli(QUICK, *args, "stages.distill.grad_accum=4", f"experiment.output_dir={acc}") == 0
    a, b = _student(one), _student(acc)
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5)
