"""PAD (torchdistill PADL2Loss + VarianceBranch4PAD): the uncertainty-weighted L2 and the plain L2 against loop
transcriptions and hand values, the two-phase chain (CE+L2, then PAD-L2 from phase 1's student and connector),
bit-exact resume, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_resume_exact, run_cli, tiny_config

from ssl_kd.engine import read_metrics
from ssl_kd.losses import PAD_EPS, feature_l2_loss, pad_l2_loss
from ssl_kd.models.feature_heads import VarianceHead
from ssl_kd.stages import pad as pad_stage


# ------------------------------------------------------------------------------------------------ losses
def loop_pad(fs, ft, s, eps):
    b, d = fs.shape
    per = [sum((float(ft[i, j]) - float(fs[i, j])) ** 2 / (eps + math.exp(float(s[i, j]))) + float(s[i, j])
               for j in range(d)) / d for i in range(b)]  # fmt: skip
    return sum(per) / b, sum(per)


def test_pad_loss_matches_a_loop_and_hand_values():
    g = torch.Generator().manual_seed(0)
    fs, ft, s = (torch.randn(6, 5, generator=g) for _ in range(3))
    mean, total = loop_pad(fs, ft, s, PAD_EPS)
    assert float(pad_l2_loss(fs, ft, s)) == pytest.approx(mean, rel=1e-5)
    assert float(pad_l2_loss(fs, ft, s, reduction="sum")) == pytest.approx(total, rel=1e-5)
    assert PAD_EPS == 1e-6  # torchdistill's PADL2Loss default and official config
    # difference 1 everywhere: s = 0 gives 1 / (1 + eps); s = log 4 gives 1/4 + log 4
    one = torch.ones(2, 3)
    assert float(pad_l2_loss(torch.zeros(2, 3), one, torch.zeros(2, 3))) == pytest.approx(1 / (1 + 1e-6))
    s4 = torch.full((2, 3), math.log(4))
    assert float(pad_l2_loss(torch.zeros(2, 3), one, s4)) == pytest.approx(0.25 + math.log(4), rel=1e-6)
    # a larger variance down-weights the difference; the + s term stops it growing for free
    big = torch.full((2, 3), 3.0)
    assert float(pad_l2_loss(torch.zeros(2, 3), 3 * one, big)) < float(pad_l2_loss(torch.zeros(2, 3), 3 * one, s4))


def test_feature_l2_is_torchdistills_mse_mean():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 8, 1, 1, generator=g), torch.randn(4, 8, generator=g)
    assert torch.allclose(feature_l2_loss(a, b), F.mse_loss(a.flatten(1), b))
    assert float(feature_l2_loss(torch.zeros(2, 2), torch.tensor([[1.0, 2.0], [0.0, 1.0]]))) == pytest.approx(1.5)


def test_variance_head_is_linear_then_batchnorm():
    head = VarianceHead(6, seed=3)
    assert [type(m).__name__ for m in head.net] == ["Linear", "BatchNorm1d"]
    assert torch.equal(VarianceHead(6, seed=3).net[0].weight, head.net[0].weight)
    assert head(torch.randn(4, 6, 1, 1)).shape == (4, 6)


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


def test_connectors_map_student_features_to_the_teacher_width():
    from ssl_kd.models import connector_for, create_model

    small, wide = create_model("resnet8", 10), create_model("resnet8x4", 10)
    pooled = connector_for("auto", small, wide)  # 64 -> 256 pooled: linear
    assert pooled.kind == "linear" and pooled(torch.randn(2, 64)).shape == (2, 256)
    same = connector_for("auto", small, create_model("resnet20", 10))
    assert same.kind == "identity" and not list(same.parameters())
    fmap = connector_for("auto", small, wide, index=2)  # stage-2 maps: 32 -> 128 channels, 1x1 conv + BN
    assert fmap.kind == "conv_bn" and fmap(torch.randn(2, 32, 16, 16)).shape == (2, 128, 16, 16)
    a, b = connector_for("linear", small, wide, seed=3), connector_for("linear", small, wide, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # the same on every rank
    with pytest.raises(ValueError, match="equal widths"):
        connector_for("identity", small, wide)
