"""--resume as a new user met it: changes confined to stages that have not started are accepted (and the result is
the run those settings would have given), changes to stages that ran are refused with nothing touched, and the run
folder is the one holding the given config.yaml, from any directory and after a copy."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from helpers import CONFIGS, run_cli, run_crashing

QUICK = CONFIGS / "quickstart.yaml"
ARGS = [
    "stages.teacher.epochs=null", "stages.teacher.iters=12", "stages.teacher.checkpoint.every=4",
    "stages.teacher.checkpoint.unit=steps", "stages.distill.epochs=null", "stages.distill.iters=8",
    "stages.distill.eval.every=4", "experiment.logger.progress=false",
]  # fmt: skip


def weights(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["models"]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """Stopped mid-teacher (step 6; its last checkpoint is step 4): the distill stage has not started."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    assert run_crashing(6, QUICK, *ARGS, f"experiment.output_dir={out}") == 130
    return out


def test_changes_to_a_stage_not_started_are_accepted(crashed, tmp_path, capsys):
    ref = tmp_path / "ref"  # what the changed settings give without any interruption
    assert run_cli(QUICK, *ARGS, "stages.distill.temperature=2.0", f"experiment.output_dir={ref}") == 0
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    capsys.readouterr()
    assert run_cli(run / "config.yaml", "--resume", "stages.distill.temperature=2.0") == 0
    out = capsys.readouterr().out
    assert "stages that have not started yet changed" in out and "stages.distill.temperature.tau: 4.0 -> 2.0" in out
    assert f"Resuming {run} at stage 'teacher' (1/2) at step 4" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["stages"]["distill"]["temperature"]["tau"] == 2.0
    a, b = weights(ref), weights(run)
    assert all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])  # exactly the changed run


def test_changes_to_a_stage_that_ran_are_refused_and_nothing_is_touched(crashed, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    before = snapshot(run)
    capsys.readouterr()
    assert run_cli(run / "config.yaml", "--resume", "stages.teacher.optimizer.lr=0.01") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stages.teacher.optimizer.lr: 0.05 -> 0.01" in err
    assert "Changes to stages that have not started (distill) are accepted" in err
    assert snapshot(run) == before


def test_resume_the_folder_holding_the_config_from_anywhere(crashed, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(crashed, copy)
    original = snapshot(crashed)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run_cli(copy, "--resume") == 0  # the run folder itself, or its config.yaml
    assert (copy / "checkpoints" / "distill" / "last.pt").is_file()
    assert snapshot(crashed) == original  # the copy resumed into itself, not into the saved output_dir
    assert not (tmp_path / "elsewhere" / "runs").exists()


def test_a_finished_run_takes_a_new_stage(tmp_path, capsys):
    one = tmp_path / "one.yaml"
    one.write_text(f"_base_: {CONFIGS / '_base_' / 'digits.yaml'}\nmodels: {{net: {{arch: mlp}}}}\n"
                   "stages:\n  train: {type: supervised, train: [net], iters: 4}\n")  # fmt: skip
    two = tmp_path / "two.yaml"
    two.write_text(f"_base_: {one}\nstages:\n  check: {{type: evaluate, uses: [net]}}\n")
    out = tmp_path / "run"
    assert run_cli(one, f"experiment.output_dir={out}", "experiment.name=x") == 0
    capsys.readouterr()
    assert run_cli(two, f"experiment.output_dir={out}", "experiment.name=x", "--resume") == 0
    printed = capsys.readouterr().out
    assert "Resuming" in printed and "the start of stage 'check' (2/2)" in printed
    assert "check" in torch.load(out / "checkpoints" / "last.pt", weights_only=True)["results"]
