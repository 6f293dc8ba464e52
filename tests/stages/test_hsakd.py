"""HSAKD / HSSAKD stages: the three stages on digits (frozen backbone parts, unrotated-only evaluation, N peers
trained together with exact resume), clear errors, and the generic `init.modules` (a stage's registered module started
from an earlier stage's weight file). The rotation, heads and losses: tests/unit/test_hsakd_parts.py."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_resume_exact, run_cli, tiny_config

from ssl_kd.data import (
    DataConfig,
    build_transform,
    load_dataset,
)
from ssl_kd.engine import read_metrics
from ssl_kd.models import create_model

ROT_NET = {"arch": "multi_exit", "kwargs": {"backbone": "resnet8", "exits": [1, 2, 3], "exit_label_factor": 4}}


# ------------------------------------------------------------------------------------------------ stages
def write(path, stages: dict, models: dict | None = None) -> str:
    return str(tiny_config(path, models or {"teacher": ROT_NET, "student": ROT_NET}, stages, name="h"))


def stage(kind: str, train: list[str], iters: int = 4, **extra) -> dict:
    return {"type": kind, "train": train, "iters": iters, "batch_size": 16,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
            "eval": {"every": iters, "unit": "steps"}, **extra}  # fmt: skip


def weights(out, stage_name=None):
    path = out / "checkpoints" / (f"{stage_name}/last.pt" if stage_name else "last.pt")
    return torch.load(path, weights_only=True)["models"]


def test_teacher_heads_on_a_frozen_backbone_then_hsakd_with_unrotated_evaluation(tmp_path):
    stages = {
        "teacher": stage("supervised", ["teacher"]),
        "teacher_aux": stage("hsakd_teacher", ["teacher"], freeze=["teacher.backbone"]),
        "student": {**stage("hsakd", ["student"], uses=["teacher"]),
                    "init": {"mode": "stage", "stage": "teacher_aux", "which": "last", "models": ["teacher"]}},
    }  # fmt: skip
    out = tmp_path / "r"
    assert run_cli(write(tmp_path / "a.yaml", stages), f"experiment.output_dir={out}") == 0
    before, after = weights(out, "teacher")["teacher"], weights(out, "teacher_aux")["teacher"]
    backbone = [k for k in before if k.startswith("backbone.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BN statistics: frozen, eval mode
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("branches."))
    final = weights(out)
    assert all(torch.equal(after[k], v) for k, v in final["teacher"].items())  # the student stage reads it frozen
    recs = [r for r in read_metrics(out) if r["stage"] == "student"]
    train = [r for r in recs if r["kind"] == "train"]
    assert {"train/ce", "train/kd", "train/kd_aux", "train/acc_aux"} <= set(train[0])
    assert "train/ce_aux" not in train[0]  # the student gets no joint-label CE
    # evaluation: the main logits of the clean (unrotated) test images
    student = create_model(ROT_NET["arch"], 10, **ROT_NET["kwargs"])
    student.load_state_dict(final["student"])
    student.eval()
    bundle = load_dataset(DataConfig.model_validate({"dataset": "digits"}))
    tf = build_transform("test", bundle)
    x = torch.stack([tf(bundle.test.image(i)) for i in range(len(bundle.test))])
    with torch.no_grad():
        top1 = (student(x).logits.argmax(1) == torch.as_tensor(bundle.test.targets)).float().mean().item()
    evals = [r for r in recs if r["kind"] == "eval"]
    assert evals[-1]["test/student/top1"] == pytest.approx(top1, abs=1e-6)


def test_online_peers_all_train_report_each_and_the_ensemble_and_resume_exactly(tmp_path):
    net = {"arch": "multi_exit", "kwargs": {"backbone": "resnet8", "exits": [3], "exit_label_factor": 4}}
    models = {"net1": net, "net2": net, "net3": net}
    st = {"online": stage("hssakd_online", ["net1", "net2", "net3"], iters=6, checkpoint={"every": 3, "unit": "steps"})}
    cfg = write(tmp_path / "o.yaml", st, models)
    full, _ = assert_resume_exact([cfg], 4, tmp_path)  # every peer's weights
    ev = [r for r in read_metrics(full) if r["kind"] == "eval"][-1]
    assert {"test/net1/top1", "test/net2/top1", "test/net3/top1", "test/ensemble/top1"} <= set(ev)
    a = weights(full)
    init = {n: create_model(net["arch"], 10, **net["kwargs"]).state_dict() for n in models}
    for n in models:
        assert any(not torch.equal(v, init[n][k]) for k, v in a[n].items() if k.endswith("weight")), n


def test_bad_configs_name_the_yaml_path(tmp_path, capsys):
    plain = {"teacher": {"arch": "resnet8"}, "student": ROT_NET}
    cfg = write(tmp_path / "b.yaml", {"s": stage("hsakd", ["student"], uses=["teacher"])}, plain)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r1'}") == 2
    assert "stages.s.uses" in capsys.readouterr().err
    cfg = write(tmp_path / "c.yaml", {"s": stage("hssakd_online", ["student"])})
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r2'}") == 2
    assert "two or more peers" in capsys.readouterr().err
    cfg = write(tmp_path / "d.yaml", {"s": stage("hsakd_teacher", ["teacher"], freeze=["teacher.trunk"])})
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r3'}") == 2
    assert "stages.s.freeze" in capsys.readouterr().err
    cfg = write(tmp_path / "e.yaml", {"s": stage("hsakd_teacher", ["teacher"], freeze=["student.backbone"])})
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r4'}") == 2
    assert "freeze" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ init.modules
def test_init_modules_start_a_registered_module_from_an_earlier_stage(tmp_path, capsys):
    """CTKD's learned temperature is a registered module of the kd stage: stage 2 starts from stage 1's."""
    models = {"teacher": {"arch": "cnn_small"}, "student": {"arch": "cnn_small"}}
    kd = {"temperature_policy": "ctkd_global", "uses": ["teacher"], "ctkd": {"ramp_epochs": 0}}
    stages = {
        "one": stage("kd", ["student"], **kd),
        "two": {**stage("kd", ["student"], iters=1, **kd), "ctkd": {"ramp_epochs": 0, "lambda_max": 0.0},  # no grad,
                "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 0.0},  # no decay: the module stays as loaded
                "init": {"mode": "stage", "stage": "one", "which": "last", "models": [], "modules": ["temperature"]}},
    }  # fmt: skip
    out = tmp_path / "r"
    assert run_cli(write(tmp_path / "m.yaml", stages, models), f"experiment.output_dir={out}") == 0
    one = torch.load(out / "checkpoints" / "one" / "last.pt", weights_only=True)["modules"]["temperature"]
    two = torch.load(out / "checkpoints" / "two" / "last.pt", weights_only=True)["modules"]["temperature"]
    assert one and all(torch.equal(v, two[k]) for k, v in one.items())
    stages["two"]["init"]["modules"] = ["projection"]
    assert run_cli(write(tmp_path / "n.yaml", stages, models), f"experiment.output_dir={tmp_path / 'r2'}") == 2
    err = capsys.readouterr().err
    assert "stages.two.init.modules" in err and "temperature" in err
