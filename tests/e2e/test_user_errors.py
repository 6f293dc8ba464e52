"""Bad input as a new user met it: each is exit 2, one line naming the path, no traceback, nothing overwritten.

In-process through `ssl_kd.run.main` (a traceback would surface as an exception here, not as exit 2); one subprocess
test checks the real command line prints no traceback.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import CONFIGS, ROOT, one_line_error, quickstart_short, run_cli

QUICK = CONFIGS / "quickstart.yaml"
SHORT = quickstart_short(6)


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished quickstart run (teacher, then distill) to point bad inputs at."""
    out = tmp_path_factory.mktemp("errors") / "run"
    assert run_cli(QUICK, *SHORT, f"experiment.output_dir={out}") == 0
    return out


# ------------------------------------------------------------------------------------------- run folder
def test_output_folder_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert run_cli(QUICK, *SHORT, f"experiment.output_dir={tmp_path / 'file' / 'run'}") == 2
    one_line_error(capsys, "experiment.output_dir", str(tmp_path / "file"), "is a file")
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_output_folder_in_proc(capsys):
    assert run_cli(QUICK, *SHORT, "experiment.output_dir=/proc/ssl_kd_run") == 2
    one_line_error(capsys, "experiment.output_dir", "/proc/ssl_kd_run")


def test_dry_run_warns_about_an_existing_run_folder(finished_run, capsys):
    before = snapshot(finished_run)
    assert run_cli(QUICK, *SHORT, f"experiment.output_dir={finished_run}", "--dry-run") == 0
    assert "WARNING: this run folder already holds a run" in capsys.readouterr().out
    assert snapshot(finished_run) == before


# ------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"x_train": np.zeros((8, 32), np.uint8)}, "x_train has shape (8, 32)"),
        ({"x_train": np.zeros((8, 8, 8, 3), np.float32)}, "dtype float32"),
        ({"y_train": np.zeros((7,), np.int64)}, "y_train has shape (7,)"),
        ({"y_test": np.zeros((4,), np.float32)}, "y_test has shape (4,) and dtype float32"),
        ({"y_train": np.full((8,), -3, np.int64)}, "negative labels"),
    ],
    ids=["x-shape", "x-dtype", "y-length", "y-dtype", "y-negative"],
)
def test_npz_with_wrong_arrays(tmp_path, capsys, arrays, needle):
    good = {"x_train": np.zeros((8, 8, 8, 3), np.uint8), "y_train": np.arange(8) % 2,
            "x_test": np.zeros((4, 8, 8, 3), np.uint8), "y_test": np.arange(4) % 2}  # fmt: skip
    path = tmp_path / "bad.npz"
    np.savez(path, **{**good, **arrays})
    data = ["data.dataset=npz", f"data.path={path}"]
    assert run_cli(QUICK, *SHORT, *data, f"experiment.output_dir={tmp_path / 'r'}") == 2
    one_line_error(capsys, "data.path", str(path), needle)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------- config
def test_fp16_on_cpu_is_refused_also_in_dry_run(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for extra in ([], ["--dry-run"]):
        assert run_cli(QUICK, "experiment.precision=fp16", f"experiment.output_dir={tmp_path / 'r'}", *extra) == 2
        one_line_error(capsys, "quickstart.yaml", "experiment.precision", "'no', 'bf16'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("arg", ["stages.distill.epochs=0", "stages.teacher.iters=0"])
def test_zero_training_length_is_refused(tmp_path, capsys, arg):
    length = ["stages.teacher.epochs=null"] if "iters" in arg else []
    assert run_cli(QUICK, *length, arg, f"experiment.output_dir={tmp_path / 'r'}", "--dry-run") == 2
    one_line_error(capsys, arg.split("=")[0], "trains nothing", "enabled=false")


@pytest.mark.parametrize(
    "arg,needles",
    [
        ("models.teacher.arch=resnet8x5", ["quickstart.yaml", "models.teacher.arch", "Did you mean 'resnet8x4'?"]),
        ("models.teacher.kwargs.widht=8", ["models.teacher.kwargs.widht", "Did you mean 'width'?"]),
        ("models.teacher.kwargs.width=0", ["models.teacher", "width=0"]),
    ],
    ids=["arch", "option-name", "option-value"],
)
def test_model_errors_name_the_yaml_path(tmp_path, capsys, arg, needles):
    assert run_cli(QUICK, arg, f"experiment.output_dir={tmp_path / 'r'}", "--dry-run") == 2
    one_line_error(capsys, *needles)


def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(f"_base_: {QUICK}\nstages:\n  teacher:\n    batch_size: 32\n    epochs: 1\n    batch_size: 16\n")
    assert run_cli(cfg, "--dry-run") == 2
    one_line_error(capsys, str(cfg), "'batch_size'", "lines 4 and 6")


def test_override_of_a_stage_that_does_not_exist(tmp_path, capsys):
    assert run_cli(QUICK, "stages.distil.optimizer.lr=1", "--dry-run") == 2
    one_line_error(capsys, "no stage 'distil'", "Did you mean 'distill'?", "Stages: distill, teacher")
    assert run_cli(QUICK, "models.studnet.kwargs.hidden=3", "--dry-run") == 2
    one_line_error(capsys, "no model 'studnet'", "Models: student, teacher")
    # a whole new stage from the command line is still possible
    assert run_cli(QUICK, *SHORT, "stages.check.type=evaluate", "stages.check.uses=[teacher]", "--dry-run") == 0


def test_a_failing_import_names_its_yaml_path(tmp_path, capsys):
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\nraise RuntimeError('oops in user code')\n")
    assert run_cli(QUICK, f"experiment.imports=[{bad}]", "--dry-run") == 2
    one_line_error(capsys, "experiment.imports[0]", "RuntimeError: oops in user code", f"{bad}:2")
    assert run_cli(QUICK, "--import", "no_such_pkg.models", "--dry-run") == 2
    one_line_error(capsys, "experiment.imports[0]", "no_such_pkg")


# ------------------------------------------------------------------------------------------- files
def test_bad_init_file_of_a_later_stage_is_found_before_any_work(tmp_path, capsys):
    bad = tmp_path / "student.pt"
    torch.save({"models": {"student": {"fc.weight": torch.zeros(3, 3)}}}, bad)
    out = tmp_path / "r"
    args = [*SHORT, "stages.distill.init.mode=checkpoint", f"stages.distill.init.path={bad}"]
    assert run_cli(QUICK, *args, f"experiment.output_dir={out}") == 2
    one_line_error(capsys, "stages.distill.init.path", str(bad), "do not fit")
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # the teacher never trained
    assert run_cli(QUICK, *args, f"experiment.output_dir={out}", "--dry-run") == 2  # the plan finds it too
    one_line_error(capsys, "stages.distill.init.path")


def test_corrupt_resume_checkpoint_points_to_intact_stage_weights(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    (run / "checkpoints" / "previous.pt").write_bytes(b"")  # and the fallback checkpoint emptied
    before = snapshot(run)
    assert run_cli(run / "config.yaml", "--resume") == 2
    line = one_line_error(capsys, str(last), "unreadable", "checkpoints/teacher/last.pt", "init")
    assert "weights_only" not in line
    assert snapshot(run) == before


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_with_code_is_refused_without_suggesting_weights_only_false(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"models": {"teacher": _Evil()}}))
    assert run_cli(QUICK, f"models.teacher.checkpoint={evil}", "--dry-run") == 2
    line = one_line_error(capsys, "models.teacher.checkpoint", str(evil), "never loads")
    assert "weights_only" not in line


def test_the_command_line_prints_no_traceback(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("a: 1\na: 2\n")
    cmd = [sys.executable, "-m", "ssl_kd.run", str(cfg)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    expected = f"{cfg}: key 'a' appears twice in one mapping (lines 1 and 2); YAML would silently keep the second."
    assert res.stderr.strip().splitlines() == [f"ssl_kd: error: {expected} Keep one."]
