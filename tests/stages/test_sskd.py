"""SSKD (xuguodong03/SSKD) stages: the teacher -> teacher_head -> student chain on digits with the head carried
over, exact resume, bad options. The losses, ranking and the four copies: tests/unit/test_sskd_losses.py."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from helpers import assert_resume_exact, run_cli, tiny_config

from ssl_kd.data import mix_seed
from ssl_kd.engine import read_metrics
from ssl_kd.models import MLPHead


# ------------------------------------------------------------------------------------------------ the stages
def write_config(path, student_stage: dict | None = None, head_stage: dict | None = None):
    models = {
        "teacher": {"arch": "cnn_small", "kwargs": {"width": 16}},
        "student": {"arch": "cnn_small", "kwargs": {"width": 8}},
    }
    stages = {
        "teacher": {"type": "supervised", "train": ["teacher"], "iters": 6, "batch_size": 32,
                    "optimizer": {"name": "sgd", "lr": 0.05}, "eval": {"every": 6, "unit": "steps"}},
        "teacher_head": {"type": "sskd_head", "uses": ["teacher"], "iters": 5, "batch_size": 16,
                         "init": {"mode": "stage", "stage": "teacher", "which": "last", "models": ["teacher"]},
                         "checkpoint": {"every": 2, "unit": "steps"}, "eval": {"every": 5, "unit": "steps"},
                         **(head_stage or {})},
        "student": {"type": "sskd", "train": ["student"], "uses": ["teacher"], "iters": 8, "batch_size": 16,
                    "init": {"mode": "stage", "stage": "teacher_head", "which": "last", "models": [],
                             "modules": ["teacher_head"]},
                    "checkpoint": {"every": 3, "unit": "steps"}, "eval": {"every": 8, "unit": "steps"},
                    **(student_stage or {})},
    }  # fmt: skip
    data = {"augment": {"weak": {"flip": True, "crop_padding": 1}}}
    return tiny_config(path, models, stages, data=data, name="sskd")


def load(path, key, name):
    return torch.load(path, weights_only=True)[key][name]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("sskd")
    cfg = write_config(root / "c.yaml")
    assert run_cli(cfg, f"experiment.output_dir={root / 'full'}") == 0
    return cfg, root / "full"


def test_chain_trains_the_head_then_distils_with_it(chain):
    _, out = chain
    ckpt = out / "checkpoints"
    head = load(ckpt / "teacher_head" / "last.pt", "modules", "teacher_head")
    in_student = load(ckpt / "student" / "last.pt", "modules", "teacher_head")
    assert head.keys() == in_student.keys() and all(torch.equal(v, in_student[k]) for k, v in head.items())
    fresh = MLPHead(64, 64, 64, seed=mix_seed(0, 2, zlib.crc32(b"teacher_head"))).state_dict()  # student's own init
    assert not all(torch.equal(v, fresh[k]) for k, v in head.items())  # so the head really came from the file
    first = MLPHead(64, 64, 64, seed=mix_seed(0, 1, zlib.crc32(b"teacher_head"))).state_dict()  # head stage's init
    assert not all(torch.equal(v, first[k]) for k, v in head.items())  # and the head stage trained it
    teacher = load(ckpt / "teacher" / "last.pt", "models", "teacher")
    final = load(ckpt / "last.pt", "models", "teacher")
    assert all(torch.equal(v, final[k]) for k, v in teacher.items())  # both later stages kept the teacher frozen
    recs = read_metrics(out)
    head_train = [r for r in recs if r["kind"] == "train" and r["stage"] == "teacher_head"]
    assert len(head_train) == 5 and all(
        0 <= r["train/ss_acc"] <= 1 and math.isfinite(r["train/ss"]) for r in head_train
    )
    train = [r for r in recs if r["kind"] == "train" and r["stage"] == "student"]
    assert len(train) == 8
    for r in train:
        assert all(math.isfinite(r[f"train/{k}"]) for k in ("ce", "kd", "tf", "ss"))
        assert r["train/kept_tf"] == 1.0  # ratio_tf 1.0 keeps every rotated row
        assert 0.75 <= r["train/kept_ss"] <= 1.0  # ratio_ss 0.75: every right row + 3/4 of the wrong ones
    assert "test/student/top1" in [r for r in recs if r["kind"] == "eval" and r["stage"] == "student"][-1]


@pytest.mark.parametrize("at", [6 + 3, 6 + 5 + 5], ids=["head-step-3", "student-step-5"])
def test_resumed_run_equals_uninterrupted(chain, tmp_path, at):
    cfg, full = chain
    student = "checkpoints/student/last.pt"
    compare = ["checkpoints/teacher_head/last.pt:modules.teacher_head", f"{student}:models.student",
               f"{student}:modules.student_head", f"{student}:modules.teacher_head"]  # fmt: skip
    assert_resume_exact([cfg], at, tmp_path, full=full, compare=compare)


@pytest.mark.parametrize(
    "student,head,message",
    [
        ({"init": {"mode": "stage", "stage": "teacher", "which": "last", "models": ["teacher"]}}, None,
         "stages.student: the teacher's projection head must come from an sskd_head stage"),
        ({"ratio_ss": 1.5}, None, "stages.student.ratio_ss"),
        ({"flip": "same"}, None, "stages.student.flip"),
        (None, {"train": ["teacher"]}, "sskd_head trains only the teacher's projection head"),
    ],
    ids=["no-head", "ratio", "flip", "head-trains-teacher"],
)  # fmt: skip
def test_bad_options_are_one_clear_error(tmp_path, capsys, student, head, message):
    cfg = write_config(tmp_path / "b.yaml", student, head)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
