"""The `kd` stage end to end on the embedded digits data: every loss / temperature policy / KA combination trains,
DOT and CTKD runs resume bit-for-bit, the teacher-logit cache, the unlabelled stream, and skipping the teacher
stage with a checkpoint file."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import CONFIGS, assert_resume_exact, run_cli, train_quickstart_teacher

from ssl_kd.components import DTDOptions
from ssl_kd.config import validate_config
from ssl_kd.engine import read_metrics
from ssl_kd.errors import UserError
from ssl_kd.memory import TeacherLogitCache
from ssl_kd.stages import dkd as dkd_stage
from ssl_kd.stages import kd as kd_stage
from ssl_kd.stages.dkd import DKDConfig
from ssl_kd.stages.kd import KDConfig

QUICK = CONFIGS / "quickstart.yaml"


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A trained digits teacher, so the tests below skip the teacher stage the documented way."""
    return train_quickstart_teacher(tmp_path_factory.mktemp("teacher") / "run", epochs=2)


def student_args(teacher_file, *extra):
    return ["stages.teacher.enabled=false", f"models.teacher.checkpoint={teacher_file}", "stages.distill.epochs=1",
            "experiment.logger.progress=false", "experiment.logger.log_every=5", *extra]  # fmt: skip


# quickstart.yaml sets KD's weights (ce 0.1, kd 0.9) explicitly; DKD runs use mdistiller's (1, 1)
DKD = ["stages.distill.loss=dkd", "stages.distill.loss_weights.ce=1.0", "stages.distill.loss_weights.kd=1.0"]


def train_records(out):
    return [r for r in read_metrics(out) if r["kind"] == "train" and r["stage"] == "distill"]


@pytest.mark.parametrize(
    "extra,tau",
    [
        ([], None),
        ([*DKD, "stages.distill.temperature_policy=ctkd_global"], (1.0, 21.0)),
        (["stages.distill.temperature_policy=ctkd_instance", "stages.distill.ka.mode=ps"], (1.0, 21.0)),
        ([*DKD, "stages.distill.temperature_policy=dtd", "stages.distill.ka.mode=lsr"], (4, 4)),
        (["stages.distill.temperature_policy=dtd", "stages.distill.dtd.weights=cwsm", "stages.distill.ka.mode=ps",
          "stages.distill.optimizer.name=dot", "stages.distill.optimizer.nesterov=false"], (4, 4)),
    ],
    ids=["kd", "dkd-ctkd_global", "kd-ctkd_instance-ps", "dkd-dtd-lsr", "kd-dtd_cwsm-ps-dot"],
)  # fmt: skip
def test_every_combination_trains(tmp_path, teacher_file, extra, tau):
    out = tmp_path / "r"
    assert run_cli(QUICK, *student_args(teacher_file, *extra), f"experiment.output_dir={out}") == 0
    recs = train_records(out)
    assert all(math.isfinite(r["train/kd"]) and math.isfinite(r["train/ce"]) for r in recs)
    if tau is None:
        assert "train/tau" not in recs[0]
    else:  # CTKD's tau stays in (1, 21); DTD's batch mean is exactly its base temperature
        assert all(tau[0] - 1e-4 <= r["train/tau"] <= tau[1] + 1e-4 for r in recs)
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert evals[-1]["test/student/top1"] > 0.2  # 10 classes, one epoch: well above chance


@pytest.mark.parametrize(
    "extra",
    [
        ["stages.distill.optimizer.name=dot", "stages.distill.optimizer.nesterov=false",
         "stages.distill.temperature_policy=ctkd_global", "stages.distill.ctkd.ramp_epochs=2"],
        ["stages.distill.temperature_policy=ctkd_instance", "stages.distill.augment=none",
         "stages.distill.cache_teacher=true", "stages.distill.loss=dkd", "stages.distill.dkd.warmup_epochs=2"],
    ],
    ids=["dot-ctkd_global", "ctkd_instance-dkd-cached_teacher"],
)  # fmt: skip
def test_resumed_run_equals_uninterrupted(tmp_path, teacher_file, extra):
    args = student_args(teacher_file, *extra, "stages.distill.epochs=2", "stages.distill.checkpoint.every=7",
                        "stages.distill.checkpoint.unit=steps")  # fmt: skip
    # crash mid epoch 2; the same weights and every metrics record (incl. the learned tau at every log)
    assert_resume_exact([QUICK, *args], 31, tmp_path, metrics=True)


def test_dkd_uses_mdistiller_weights_and_warmup():
    c = DKDConfig.model_validate({"type": "dkd"})
    assert c.loss_weights == {"ce": 1.0, "kd": 1.0} and (c.alpha, c.beta, c.warmup_epochs) == (1, 8, 20)
    assert DKDConfig.model_validate({"type": "dkd", "loss_weights": {"kd": 2}}).loss_weights == {"ce": 1.0, "kd": 2.0}
    assert KDConfig.model_validate({"type": "kd"}).loss_weights == {"ce": 0.1, "kd": 0.9}


def test_old_kd_keys_are_aliases_with_a_deprecation_note():
    """`type: kd, loss: dkd, dkd: {...}` and `temperature_policy` + `ctkd:` / `dtd:` still validate, as the new
    blocks, and each rewrite is noted (the dry run prints the notes)."""
    old = {"type": "kd", "train": ["s"], "uses": ["t"], "loss": "dkd", "dkd": {"beta": 6.0}, "temperature": 2.0,
           "temperature_policy": "dtd", "dtd": {"tau_squared": False}, "ctkd": {"hidden": 3}}  # fmt: skip
    raw = {"models": {"s": {"arch": "mlp"}, "t": {"arch": "mlp"}}, "data": {"dataset": "digits"}, "stages": {"d": old}}
    cfg = validate_config(raw)
    st = cfg.stages["d"]
    assert isinstance(st, DKDConfig) and st.beta == 6.0 and st.alpha == 1.0
    assert st.temperature.model_dump() == {**DTDOptions(tau=2.0, tau_squared=False).model_dump(), "policy": "dtd"}
    notes = " | ".join(cfg._deprecations["d"])
    assert "`type: dkd`" in notes and "`dkd:` block" in notes and "temperature: {policy: dtd, tau: 2.0" in notes
    assert "`ctkd:` is ignored" in notes
    typo = r"stages\.d\.temperature\.tau_sqared: unknown key\. Did you mean 'tau_squared'"
    with pytest.raises(UserError, match=typo):
        new = {"type": "kd", "train": ["s"], "uses": ["t"], "temperature": {"policy": "dtd", "tau_sqared": 1}}
        validate_config({**raw, "stages": {"d": new}})


def test_dkd_warmup_scales_the_kd_term_per_epoch(tmp_path, teacher_file, monkeypatch):
    seen = []
    real = dkd_stage.dkd_loss

    def spy(s, t, y, alpha, beta, tau, *rest):
        value = real(s, t, y, alpha, beta, tau, *rest)
        seen.append(value.item())
        return value

    monkeypatch.setattr(dkd_stage, "dkd_loss", spy)
    out = tmp_path / "w"
    args = student_args(teacher_file, "stages.distill.type=dkd", "stages.distill.warmup_epochs=4",
                        "stages.distill.iters=2", "stages.distill.epochs=None", "stages.distill.steps_per_epoch=1",
                        "experiment.logger.log_every=1")  # fmt: skip
    assert run_cli(QUICK, *args, f"experiment.output_dir={out}") == 0
    kd_terms = [r["train/kd"] for r in train_records(out)]
    assert kd_terms == pytest.approx([seen[0] / 4, seen[1] * 2 / 4], rel=1e-5)  # epochs 1 and 2 of 4


def test_teacher_logit_cache():
    cache = TeacherLogitCache(10)
    calls = []

    def compute(rows):
        def f():
            calls.append(rows)
            return torch.arange(len(rows) * 3, dtype=torch.float32).reshape(len(rows), 3) + 10 * rows[0]

        return f

    first = cache.lookup(torch.tensor([1, 2]), compute([1, 2]))
    again = cache.lookup(torch.tensor([2, 1]), compute([2, 1]))  # all known: no teacher call, stored rows
    assert len(calls) == 1 and torch.equal(again, first.flip(0))
    cache.lookup(torch.tensor([2, 3]), compute([2, 3]))  # one unknown: the batch is recomputed
    assert len(calls) == 2
    restored = TeacherLogitCache(10)
    restored.load_state_dict(cache.state_dict())
    assert torch.equal(restored.lookup(torch.tensor([3]), compute([3])), cache.logits[[3]]) and len(calls) == 2


def test_cache_needs_unaugmented_inputs(tmp_path, capsys):
    assert run_cli(QUICK, "stages.distill.cache_teacher=true", f"experiment.output_dir={tmp_path}", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "stages.distill.cache_teacher" in err and "augment is 'weak'" in err and "augment: none" in err


def test_unlabeled_stream_adds_images_to_the_kd_term_only(tmp_path, teacher_file, monkeypatch):
    shapes = []
    real = kd_stage.kd_loss

    def spy(s, t, tau, *rest):
        shapes.append(s.shape[0])
        return real(s, t, tau, *rest)

    monkeypatch.setattr(kd_stage, "kd_loss", spy)
    out = tmp_path / "u"
    args = student_args(teacher_file, "data.ssl.num_labels=100", "stages.distill.unlabeled=true",
                        "stages.distill.batch_size=20", "stages.distill.unlabeled_batch_size=30")  # fmt: skip
    assert run_cli(QUICK, *args, f"experiment.output_dir={out}") == 0
    assert set(shapes) == {50} and len(shapes) == 100 // 20  # an epoch is one pass over the 100 labelled images
    assert (out / "split.npz").is_file()
    resolved = (out / "config.yaml").read_text()
    assert "subset: labeled" in resolved


def test_unlabeled_needs_a_split_and_the_labelled_subset(tmp_path, capsys):
    assert run_cli(QUICK, "stages.distill.unlabeled=true", f"experiment.output_dir={tmp_path / 'a'}", "--dry-run") == 2
    assert "data.ssl.num_labels" in capsys.readouterr().err
    args = ["stages.distill.unlabeled=true", "stages.distill.subset=all", "data.ssl.num_labels=100"]
    assert run_cli(QUICK, *args, f"experiment.output_dir={tmp_path / 'b'}", "--dry-run") == 2
    assert "stages.distill.subset" in capsys.readouterr().err


def test_teacher_and_student_class_counts_must_match(tmp_path, capsys):
    args = ["models.student.num_classes=7", f"experiment.output_dir={tmp_path}", "--dry-run"]
    assert run_cli(QUICK, *args) == 2
    assert "same number of classes" in capsys.readouterr().err


def test_kd_config_skips_the_teacher_stage_with_a_checkpoint(tmp_path, fake_data_root, capsys):
    from ssl_kd.models import create_model

    teacher = tmp_path / "wrn_40_2.pt"
    torch.save({"models": {"teacher": create_model("wrn_40_2", 100).state_dict()}}, teacher)
    out = tmp_path / "r"
    args = [f"data.root={fake_data_root}", "data.num_workers=0", "data.limit_test=50", "stages.teacher.enabled=false",
            f"models.teacher.checkpoint={teacher}", "stages.student.epochs=None", "stages.student.iters=2",
            "stages.student.batch_size=16", "stages.student.eval.batch_size=25",
            f"experiment.output_dir={out}"]  # fmt: skip
    path = CONFIGS / "kd" / "kd_dot_wrn40_2_wrn16_2.yaml"
    assert run_cli(path, *args, "--dry-run") == 0
    plan = capsys.readouterr().out
    assert "(disabled)" in plan and str(teacher) in plan
    assert run_cli(path, *args) == 0
    assert {r["stage"] for r in read_metrics(out)} == {"student"}
