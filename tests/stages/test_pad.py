"""PAD (torchdistill PADL2Loss + VarianceBranch4PAD) stages: the two-phase chain (CE+L2, then PAD-L2 from phase 1's
student and connector), bit-exact resume, and clear errors. The losses: tests/unit/test_pad_losses.py."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_resume_exact, run_cli, tiny_config

from ssl_kd.engine import read_metrics
from ssl_kd.stages import pad as pad_stage


# ------------------------------------------------------------------------------------------------ stage
def write_pad(path, phase2: dict | None = None, iters: int = 2, **phase1):
    """digits: a cnn_small teacher (width 16, feat 64) -> a narrower student (width 8, feat 32): a linear connector."""
    common = {"train": ["student"], "uses": ["teacher"], "iters": iters, "batch_size": 32,
              "eval": {"every": iters, "unit": "steps"}}  # fmt: skip
    models = {"teacher": {"arch": "cnn_small", "kwargs": {"width": 16}},
              "student": {"arch": "cnn_small", "kwargs": {"width": 8}}}  # fmt: skip
    stages = {
        "teacher": {"type": "supervised", "train": ["teacher"], "iters": 2, "batch_size": 32,
                    "eval": {"every": 2, "unit": "steps"}},
        "student": {"type": "pad", **common, "init": {"mode": "stage", "stage": "teacher", "which": "last",
                                                      "models": ["teacher"]}, **phase1},
        "student_pad": {"type": "pad", "uncertainty": True, **common,
                        "optimizer": {"name": "sgd", "lr": 0.002, "weight_decay": 1.0e-4},
                        "init": {"mode": "stage", "stage": "student", "which": "last", "models": ["student"],
                                 "modules": ["connector"]}, **(phase2 or {})},
    }  # fmt: skip
    return tiny_config(path, models, stages, name="pad")


def test_pad_chain_carries_the_connector_and_resumes_bit_exact(tmp_path, monkeypatch):
    starts = {}

    def keep_start(self):
        starts[self.name] = {k: v.clone() for k, v in self.modules["connector"].state_dict().items()}

    monkeypatch.setattr(pad_stage.PAD, "on_stage_start", keep_start)
    phase2 = {"iters": 4, "checkpoint": {"every": 2, "unit": "steps"}, "eval": {"every": 4, "unit": "steps"}}
    cfg = write_pad(tmp_path / "c.yaml", phase2=phase2)
    full = tmp_path / "full"
    assert run_cli(cfg, f"experiment.output_dir={full}") == 0
    recs = [r for r in read_metrics(full) if r["kind"] == "train"]
    p1 = [r for r in recs if r["stage"] == "student"]
    p2 = [r for r in recs if r["stage"] == "student_pad"]
    assert all("train/pad" not in r and r["train/l2"] > 0 for r in p1)  # phase 1: CE + L2
    assert all(math.isfinite(r["train/pad"]) and "train/log_var" in r for r in p2)  # phase 2: CE + PAD (+ L2 logged)
    assert p1[0]["train/loss"] == pytest.approx(p1[0]["train/ce"] + 15 * p1[0]["train/l2"], rel=1e-5)
    assert p2[0]["train/loss"] == pytest.approx(p2[0]["train/ce"] + p2[0]["train/pad"], rel=1e-5)
    # phase 2 starts from phase 1's last connector (a linear one: widths 32 -> 64), and trains it further
    phase1 = torch.load(full / "checkpoints" / "student" / "last.pt", weights_only=True)["modules"]["connector"]
    assert phase1["body.weight"].shape == (64, 32)
    assert all(torch.equal(v, starts["student_pad"][k]) for k, v in phase1.items())
    assert not torch.equal(starts["student"]["body.weight"], phase1["body.weight"])
    phase2 = torch.load(full / "checkpoints" / "student_pad" / "last.pt", weights_only=True)["modules"]
    assert set(phase2) == {"connector", "variance"}
    # kill -9 in phase 2 (its step 3 of 4), --resume: the same final weights and phase-2 modules
    compare = ["checkpoints/last.pt:models", "checkpoints/student_pad/last.pt:modules"]
    assert_resume_exact([cfg], 7, tmp_path, full=full, compare=compare)


@pytest.mark.parametrize(
    "phase1,message",
    [
        ({"loss_weights": {"pad": 1.0}}, "set uncertainty: true"),
        ({"connector": "identity"}, "stages.student.connector"),
        ({"loss_weights": {"kd": 1.0}}, "stages.student.loss_weights"),
        ({"uses": []}, "stages.student.uses"),
    ],
)
def test_pad_bad_options_are_one_clear_error(tmp_path, capsys, phase1, message):
    cfg = write_pad(tmp_path / "c.yaml", **phase1)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
