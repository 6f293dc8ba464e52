"""The runner end to end on the embedded digits data: stage types, run folder, resume, errors, guards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import CONFIGS, ROOT, assert_resume_exact, assert_same_tree, run_cli

from ssl_kd.engine import read_metrics

QUICK = CONFIGS / "quickstart.yaml"
TINY = [
    "stages.teacher.epochs=2", "stages.distill.epochs=2", "stages.teacher.eval.every=1",
    "stages.distill.eval.every=1", "experiment.logger.log_every=3",
]  # fmt: skip


def load_last(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def test_quickstart_two_stages_write_the_run_folder(tmp_path, capsys):
    out = tmp_path / "qs"
    assert run_cli(QUICK, *TINY, f"experiment.output_dir={out}") == 0
    printed = capsys.readouterr().out
    assert "Run folder:" in printed and "distill" in printed
    for f in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/teacher/best.pt",
              "checkpoints/teacher/last.pt", "checkpoints/distill/best.pt", "checkpoints/distill/last.pt"):  # fmt: skip
        assert (out / f).is_file(), f
    records = read_metrics(out)
    assert {r["stage"] for r in records} == {"teacher", "distill"}
    assert all("step" in r and "global_step" in r for r in records)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["test/student/top1"] > 0.3  # 10 classes: chance is 0.1
    train = [r for r in records if r["kind"] == "train" and r["stage"] == "distill"]
    assert {"train/ce", "train/kd", "train/loss", "lr"} <= set(train[0])
    # the weighted sum the runner optimizes is exactly 0.1*ce + 0.9*kd of each step
    ckpt = load_last(out)
    assert ckpt["stage_index"] == 2 and not ckpt["in_stage"]
    assert ckpt["results"]["distill"]["best_top1"] >= ckpt["results"]["distill"]["last"]["student/top1"]


def test_resolved_config_is_rerunnable(tmp_path):
    out = tmp_path / "a"
    assert run_cli(QUICK, *TINY, "stages.teacher.optimizer.lr=0.02", f"experiment.output_dir={out}") == 0
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["stages"]["teacher"]["optimizer"]["lr"] == 0.02
    assert resolved["stages"]["distill"]["ema"]["decay"] == 0.999  # defaults are filled in
    assert run_cli(out / "config.yaml", "--dry-run") == 0


RESUME_ARGS = [
    *TINY, "stages.teacher.mix={kind: cutmix, alpha: 1.0, prob: 0.5}", "stages.teacher.ema.enabled=true",
    "stages.teacher.checkpoint.every=5", "stages.teacher.checkpoint.unit=steps",
    "stages.distill.checkpoint.every=7", "stages.distill.checkpoint.unit=steps",
    "stages.distill.init.mode=stage", "stages.distill.init.which=best", "stages.distill.init.models=[teacher]",
]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    assert run_cli(QUICK, *RESUME_ARGS, f"experiment.output_dir={out}") == 0
    return out


@pytest.mark.parametrize("crash_at", [13, 42, 60])  # mid-teacher, at the stage boundary, mid-distill
def test_resume_is_bit_identical(tmp_path, uninterrupted, crash_at):
    stages = [f"checkpoints/{s}/{which}.pt:models" for s in ("teacher", "distill") for which in ("best", "last")]
    compare = ["checkpoints/last.pt:models", *stages]
    assert_resume_exact([QUICK, *RESUME_ARGS], crash_at, tmp_path, full=uninterrupted, compare=compare, metrics=True)


def test_resume_with_data_workers_is_bit_identical(tmp_path):
    args = [*TINY, "data.num_workers=2", "stages.distill.epochs=1", "stages.teacher.checkpoint.every=4",
            "stages.teacher.checkpoint.unit=steps", "data.augment.weak.flip=true"]  # fmt: skip
    assert_resume_exact([QUICK, *args], 30, tmp_path)


@pytest.mark.slow  # test_faults.py kills a real process (-9) and resumes it in CI
def test_kill_9_then_resume_matches(tmp_path, uninterrupted):
    """A real SIGKILL at an arbitrary moment, then --resume: same final weights as the uninterrupted run."""
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ssl_kd.run", str(QUICK), *RESUME_ARGS, f"experiment.output_dir={out}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints" / "last.pt").exists() and (out / "metrics.jsonl").stat().st_size > 0:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if (out / "checkpoints" / "last.pt").exists() and load_last(out)["stage_index"] < 2:
        assert run_cli(out / "config.yaml", "--resume") == 0
    assert_same_tree(load_last(uninterrupted)["models"], load_last(out)["models"])


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    from ssl_kd.engine import checkpoint_io as ck

    path = tmp_path / "last.pt"
    ck.save_atomic({"step": 1, "w": torch.ones(3)}, path)

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", torn_save)
    with pytest.raises(ck.CheckpointWriteError, match=r"cannot write .*last.pt \(disk full\); the previous"):
        ck.save_atomic({"step": 2, "w": torch.zeros(3)}, path)
    assert ck.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(QUICK, *TINY, "stages.distill.enabled=false", f"experiment.output_dir={out}") == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_cli(QUICK, *TINY, f"experiment.output_dir={out}") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(QUICK, *TINY, "stages.distill.enabled=false", f"experiment.output_dir={out}") == 0
    capsys.readouterr()
    assert run_cli(out / "config.yaml", "--resume", "models.teacher.kwargs.width=8") == 2
    err = capsys.readouterr().err
    assert "models.teacher.kwargs.width" in err and "32 -> 8" in err


def test_resume_without_checkpoint(tmp_path, capsys):
    assert run_cli(QUICK, f"experiment.output_dir={tmp_path / 'none'}", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter; CI holds the same (exit 2, one line, no traceback) with
# test_user_errors.py::test_the_command_line_prints_no_traceback and the message in-process (test_config.py)
def test_user_errors_exit_2_with_one_message_and_no_traceback(tmp_path):
    cmd = [sys.executable, "-m", "ssl_kd.run", str(QUICK), "stages.teacher.optimizer.lrr=0.1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "stages.teacher.optimizer.lrr: unknown key. Did you mean 'lr'?" in res.stderr
    assert "quickstart.yaml" in res.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["data.dataset=cifar10", "data.root=/nonexistent/place"], "cifar10.npz"),
        (["models.teacher.arch=resnet8x5"], "resnet8x4"),
        (["models.teacher.checkpoint=/no/such.pt"], "/no/such.pt"),
        (["stages.teacher.batch_size=5000"], "stages.teacher.batch_size"),
        (["stages.teacher.subset=labeled"], "data.ssl.num_labels"),
        (["--bogus"], "unknown option"),
    ],
)
def test_bad_input_gives_clear_error(tmp_path, capsys, args, needle):
    assert run_cli(QUICK, *args, f"experiment.output_dir={tmp_path / 'x'}") == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_nan_guard_stops_and_names_the_term(tmp_path, capsys, monkeypatch):
    from ssl_kd.stages import kd

    real = kd.kd_loss
    calls = {"n": 0}

    def poisoned(s, t, tau, *args):
        calls["n"] += 1
        return real(s, t, tau, *args) * (float("nan") if calls["n"] > 6 else 1.0)

    monkeypatch.setattr(kd, "kd_loss", poisoned)
    out = tmp_path / "nan"
    args = [*TINY, "stages.distill.checkpoint.every=5", "stages.distill.checkpoint.unit=steps"]
    assert run_cli(QUICK, *args, f"experiment.output_dir={out}") == 1
    err = capsys.readouterr().err
    assert "['kd']" in err and "NaN/inf" in err and "last good checkpoint" in err
    ckpt = load_last(out)
    assert ckpt["stage_index"] == 1 and ckpt["step"] == 5  # the finite step-5 state, never a NaN one
    assert all(torch.isfinite(v).all() for v in ckpt["models"]["student"].values() if v.is_floating_point())


def test_init_from_checkpoint_file_and_evaluate_stage(tmp_path):
    first = tmp_path / "first"
    assert run_cli(QUICK, *TINY, "stages.distill.enabled=false", f"experiment.output_dir={first}") == 0
    teacher_file = first / "checkpoints" / "teacher" / "last.pt"
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"_base_: {CONFIGS / '_base_' / 'digits.yaml'}\n"
        "models:\n  teacher: {arch: cnn_small, kwargs: {width: 32}, checkpoint: " + str(teacher_file) + "}\n"
        "stages:\n  check: {type: evaluate, uses: [teacher]}\n"
    )
    out = tmp_path / "second"
    assert run_cli(cfg, f"experiment.output_dir={out}") == 0
    acc_first = load_last(first)["results"]["teacher"]["last"]["teacher/top1"]
    acc_second = load_last(out)["results"]["check"]["last"]["teacher/top1"]
    assert acc_second == pytest.approx(acc_first)


def test_ssl_split_saved_and_reloaded(tmp_path):
    from ssl_kd.data import DataConfig, load_dataset, load_split, ssl_split

    out = tmp_path / "s"
    args = [*TINY, "stages.distill.enabled=false", "stages.teacher.subset=labeled", "data.ssl.num_labels=40",
            "stages.teacher.batch_size=20"]  # fmt: skip
    assert run_cli(QUICK, *args, f"experiment.output_dir={out}") == 0
    lb, ulb = load_split(out / "split.npz")
    bundle = load_dataset(DataConfig(dataset="digits"))
    exp_lb, exp_ulb = ssl_split(bundle.train.targets, 40, 10, seed=0)
    assert (lb == exp_lb).all() and (ulb == exp_ulb).all()
    assert len(lb) == 40 and set(lb) <= set(ulb)


def test_gradient_accumulation_runs_and_keeps_global_batch(tmp_path):
    out = tmp_path / "acc"
    assert run_cli(QUICK, *TINY, "stages.teacher.grad_accum=2", "stages.distill.enabled=false",
                   f"experiment.output_dir={out}") == 0  # fmt: skip
    steps = max(r["step"] for r in read_metrics(out) if r["stage"] == "teacher")
    assert steps == 2 * (1397 // 64)


def test_metrics_jsonl_records_are_json_with_stage_and_step(tmp_path):
    out = tmp_path / "m"
    assert run_cli(QUICK, *TINY, "stages.distill.enabled=false", f"experiment.output_dir={out}") == 0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["stage"] == "teacher" and isinstance(rec["step"], int)
