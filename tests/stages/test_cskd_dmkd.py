"""Teacher-student III in runs: CSKD's beta schedule and stage, DM-KD's synthetic data source, the kd stage with CE
weight 0 (no label read), mixing and the teacher's no_grad, and `python -m ssl_kd.synth` without weights. The ViT,
dense logits and CSKD's losses: tests/unit/test_cskd_parts.py."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from helpers import (
    CONFIGS,
    TINY_VIT,
    assert_resume_exact,
    run_cli,
    tiny_config,
    train_quickstart_teacher,
    write_fake_npz,
    write_synthetic_folder,
)

from ssl_kd.data import SYNTHETIC_NAME_REGEX, DataConfig, load_dataset
from ssl_kd.data.sources.synthetic import parse_label
from ssl_kd.engine import read_metrics
from ssl_kd.errors import UserError
from ssl_kd.stages import kd as kd_stage

QUICK = CONFIGS / "quickstart.yaml"


# ------------------------------------------------------------------------------------------------ stages
@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return train_quickstart_teacher(tmp_path_factory.mktemp("teacher") / "run", epochs=1)


def write_config(path, teacher_file, student: dict, stage: dict, data: dict | None = None):
    models = {
        "teacher": {"arch": "cnn_small", "kwargs": {"width": 32}, "checkpoint": str(teacher_file)},
        "student": student,
    }
    stages = {"distill": {"train": ["student"], "uses": ["teacher"], "iters": 8, "batch_size": 32,
                          "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                          "eval": {"every": 8, "unit": "steps"}, **stage}}  # fmt: skip
    return tiny_config(path, models, stages, data=data)


def train_records(out):
    return [r for r in read_metrics(out) if r["kind"] == "train"]


DIST_VIT = {"arch": "vit", "kwargs": {**TINY_VIT, "dist_token": True}}


def test_cskd_official_defaults_beta_per_epoch_prediction_and_resume(tmp_path, teacher_file):
    """The official code's defaults (Zzzzz1/CSKD@fa0d8b8): beta = epoch / epochs per 0-based epoch, the patch term,
    and the (cls + dist + dense) / 3 prediction as the headline, of the EMA model too (the code keeps one).
    cnn_small's last map on 8 px digits is 2x2; the ViT's 4x4 patch grid is pooled to it. Kill mid-run + resume =
    the same weights."""
    stage = {"type": "cskd", "iters": None, "epochs": 2, "checkpoint": {"every": 4, "unit": "steps"},
             "eval": {"every": 2}, "ema": {"enabled": True, "decay": 0.9}}  # fmt: skip
    cfg = write_config(tmp_path / "c.yaml", teacher_file, DIST_VIT, stage, data={"limit_train": 96})
    full, _ = assert_resume_exact([cfg], 4, tmp_path)
    recs = train_records(full)
    assert [r["train/beta"] for r in recs] == pytest.approx([0.0] * 3 + [0.5] * 3)  # 3 steps per epoch
    assert all(math.isfinite(r["train/patch"]) and r["train/patch"] > 0 for r in recs)
    last = [r for r in read_metrics(full) if r["kind"] == "eval"][-1]
    # the headline is the first named prediction (avg3); then DeiT's avg and each output alone
    assert {"test/student/top1", "test/student/avg/top1", "test/student/dense/top1"} <= set(last)
    assert "test/student/raw_dense/top1" in last  # the live model beside the EMA one


def test_cskd_earlier_reading_as_options(tmp_path, teacher_file):
    """Our first reading of the paper, one key each: a plain ViT, class token, soft KD, probability fusion averaged
    over positions, a separate patch head, the model's own prediction, beta per step."""
    stage = {"type": "cskd", "token": "cls", "token_kd": "soft", "token_reduction": "batch", "patch_kd": "soft_ce",
             "patch_reduction": "mean", "fusion": "probs", "patch_head": "separate", "predict": "model",
             "loss_weights": {"ce": 1.0, "kd": 1.0}, "beta": {"shape": "linear", "unit": "step"}}  # fmt: skip
    cfg = write_config(tmp_path / "c.yaml", teacher_file, {"arch": "vit", "kwargs": TINY_VIT}, stage)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 0
    recs = train_records(tmp_path / "r")
    assert [r["train/beta"] for r in recs] == pytest.approx([k / 8 for k in range(8)])  # linear 0 -> 1 per step
    assert all(math.isfinite(r["train/patch"]) and r["train/patch"] > 0 for r in recs)
    evals = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "eval"]
    assert "test/student/top1" in evals[-1] and "test/student/dense/top1" not in evals[-1]


def test_cskd_distillation_token_baseline_and_resume(tmp_path, teacher_file):
    """DeiT-style: distillation token, hard teacher labels, no patch term (so no beta, and the model's own
    (cls + dist) / 2 prediction); kill mid-run + resume = same weights."""
    stage = {
        "type": "cskd", "token": "dist", "token_kd": "hard", "loss_weights": {"ce": 0.5, "kd": 0.5, "patch": 0.0},
        "iters": 10, "checkpoint": {"every": 4, "unit": "steps"}, "eval": {"every": 10, "unit": "steps"},
    }  # fmt: skip
    cfg = write_config(tmp_path / "d.yaml", teacher_file, DIST_VIT, stage)
    full, _ = assert_resume_exact([cfg], 6, tmp_path)
    assert "train/patch" not in train_records(full)[0] and "train/beta" not in train_records(full)[0]
    last = [r for r in read_metrics(full) if r["kind"] == "eval"][-1]
    assert "test/student/dist/top1" in last and "test/student/dense/top1" not in last


def test_cskd_bad_configs(tmp_path, teacher_file, capsys):
    for i, extra in enumerate([{}, {"token": "cls", "patch_head": "separate"}]):  # the defaults need a dist token
        cfg = write_config(tmp_path / f"e{i}.yaml", teacher_file, {"arch": "vit", "kwargs": TINY_VIT},
                           {"type": "cskd", **extra})  # fmt: skip
        assert run_cli(cfg, f"experiment.output_dir={tmp_path / f'r{i}'}") == 2
        err = capsys.readouterr().err
        assert "dist_token: true" in err and ("predict: official" in err if extra else "token: dist" in err)
    cfg = write_config(tmp_path / "f.yaml", teacher_file, DIST_VIT, {"type": "cskd", "loss_weights": {"patches": 1.0}})
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r2'}") == 2
    assert "stages.distill.loss_weights" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ DM-KD data
def test_label_parsing_from_file_names():
    pattern = re.compile(SYNTHETIC_NAME_REGEX)
    assert parse_label("class_37_seed_4_num_9.png", pattern) == 37
    assert parse_label("class_0_seed_0_num_0.JPG", pattern) is None  # full match, case as given
    assert parse_label("class_0_seed_0_num_0.jpeg", pattern) == 0
    assert parse_label("xclass_1_seed_0_num_0.png", pattern) is None
    assert parse_label("img_12.png", re.compile(r"img_(\d+)\.png")) == 12  # first group when no `label`


def synthetic_cfg(root, **source):
    return DataConfig.model_validate(
        {"dataset": "cifar10", "root": str(root), "train_source": {"path": "syn", **source}}
    )


def test_synthetic_folder_trains_and_real_test_split_stays(tmp_path):
    write_fake_npz(tmp_path / "cifar10.npz", 10, 3, 2)
    write_synthetic_folder(tmp_path / "syn", 10, 2, size=16)  # other size: resized to the dataset's 32 px
    data = load_dataset(synthetic_cfg(tmp_path))
    assert len(data.train) == 20 and len(data.test) == 20 and data.image_size == 32
    assert sorted(np.bincount(data.train.targets)) == [2] * 10
    assert data.train.image(0).shape == (32, 32, 3)
    assert data.train.image(0)[0, 0, 0] == 0 and "syn" in data.source  # class 0: red channel 0
    real = load_dataset(DataConfig.model_validate({"dataset": "cifar10", "root": str(tmp_path)}))
    assert np.array_equal(real.test.images, data.test.images)  # validation on the real test set


def test_bad_file_name_is_one_clear_error_naming_it(tmp_path):
    write_fake_npz(tmp_path / "cifar10.npz", 10, 1, 1)
    write_synthetic_folder(tmp_path / "syn", 10, 1)
    (tmp_path / "syn" / "class_3_num_1.png").write_bytes((tmp_path / "syn" / "class_3_seed_3_num_0.png").read_bytes())
    with pytest.raises(UserError, match=r"class_3_num_1\.png.*label_regex"):
        load_dataset(synthetic_cfg(tmp_path))
    (tmp_path / "syn" / "class_3_num_1.png").unlink()
    (tmp_path / "syn" / "class_12_seed_0_num_0.png").write_bytes(
        (tmp_path / "syn" / "class_3_seed_3_num_0.png").read_bytes()
    )
    with pytest.raises(UserError, match=r"class_12_seed_0_num_0\.png has class 12, outside .*0\.\.9"):
        load_dataset(synthetic_cfg(tmp_path))
    with pytest.raises(UserError, match="no such folder"):
        load_dataset(synthetic_cfg(tmp_path, path="missing"))
    with pytest.raises(ValueError, match="group"):
        synthetic_cfg(tmp_path, label_regex=r"class_\d+\.png")


def test_image_folder_and_npz_sources(tmp_path):
    from PIL import Image

    write_fake_npz(tmp_path / "cifar10.npz", 10, 1, 1)
    for c, name in [(1, "1"), (4, "4")]:
        (tmp_path / "syn" / name).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), c, np.uint8)).save(tmp_path / "syn" / name / "a.png")
    data = load_dataset(synthetic_cfg(tmp_path, kind="image_folder"))
    assert data.train.targets.tolist() == [1, 4]
    np.savez(tmp_path / "syn.npz", x=np.zeros((6, 32, 32, 3), np.uint8))  # no labels: -1, enough for CE weight 0
    data = load_dataset(synthetic_cfg(tmp_path, kind="npz", path="syn.npz"))
    assert data.train.targets.tolist() == [-1] * 6


# ------------------------------------------------------------------------------------------------ kd stage options
class NoLabels(dict):
    def __getitem__(self, key):
        if key == "y":
            raise AssertionError("the step read the labels")
        return super().__getitem__(key)


@pytest.mark.parametrize("mix", [{"kind": "none"}, {"kind": "mixup", "alpha": 0.4}, {"kind": "cutmix", "alpha": 0.25}])
def test_ce_weight_0_never_reads_labels_and_teacher_gets_no_grad(tmp_path, teacher_file, monkeypatch, mix):
    """DM-KD: the kd stage on an unlabelled synthetic set (labels -1), CE weight 0, optional mixing."""
    np.savez(tmp_path / "syn.npz", x=np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))
    seen = {}
    orig = kd_stage.KD.train_step

    def guarded(self, batch):
        batch = {**batch, "train": NoLabels(batch["train"])}
        out = orig(self, batch)
        seen["teacher_grads"] = [p.grad for p in self.raw_model("teacher").parameters()]
        seen["mixed"] = seen.get("mixed", False) or "lam" in out[1]
        return out

    monkeypatch.setattr(kd_stage.KD, "train_step", guarded)
    source = {"train_source": {"kind": "npz", "path": str(tmp_path / "syn.npz")}}
    stage = {"type": "kd", "loss_weights": {"ce": 0.0, "kd": 1.0}, "temperature": 4.0, "mix": mix,
             "optimizer": {"name": "sgd", "lr": 0.05}, "data": source}  # fmt: skip
    cfg = write_config(tmp_path / "k.yaml", teacher_file, {"arch": "mlp", "kwargs": {"hidden": 32, "depth": 1}}, stage)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 0
    recs = train_records(tmp_path / "r")
    assert all("train/ce" not in r and "train/acc" not in r and math.isfinite(r["train/kd"]) for r in recs)
    assert "train/agree" in recs[0]
    assert all(g is None for g in seen["teacher_grads"])
    assert seen["mixed"] == (mix["kind"] != "none")
    evals = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "eval"]
    assert 0 <= evals[-1]["test/student/top1"] <= 1  # evaluated on the real digits test split


def test_kd_mix_with_labels_and_bad_combinations(tmp_path, teacher_file, capsys):
    stage = {"type": "kd", "mix": {"kind": "cutmix", "alpha": 1.0}, "optimizer": {"name": "sgd", "lr": 0.05}}
    cfg = write_config(tmp_path / "m.yaml", teacher_file, {"arch": "mlp", "kwargs": {"hidden": 32, "depth": 1}}, stage)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 0
    assert all(math.isfinite(r["train/ce"]) for r in train_records(tmp_path / "r"))
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r2'}", "stages.distill.augment=none",
                   "stages.distill.cache_teacher=true") == 2  # fmt: skip
    assert "cache_teacher" in capsys.readouterr().err
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r3'}", "stages.distill.mix.kind=none",
                   "stages.distill.loss_weights.ce=0", "stages.distill.ka.mode=lsr") == 2  # fmt: skip
    assert "no labels are read" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ synth tool
def test_synth_writes_dmkd_names_the_data_source_reads(tmp_path):
    from PIL import Image

    from ssl_kd.synth import class_plan, generate

    calls = []

    class FakePipe:
        def __call__(self, class_labels, guidance_scale, num_inference_steps, generator):
            calls.append((class_labels[0], guidance_scale, num_inference_steps))
            v = int(torch.randint(0, 255, (1,), generator=generator))
            return type("Out", (), {"images": [Image.new("RGB", (64, 64), (v, 0, 0)) for _ in class_labels]})()

    (tmp_path / "map.json").write_text('{"0": 948, "2": 7}')
    plan = class_plan(None, str(tmp_path / "map.json"))
    assert plan == [(0, 948), (2, 7)]
    files = generate(FakePipe(), plan, tmp_path / "syn", per_class=5, batch=3, size=32)
    assert len(files) == 12 and calls[0] == (948, 2.0, 100)  # ceil(5 / 3) = 2 seeds x 3 images per class
    assert sorted(f.name for f in files)[:3] == ["class_0_seed_0_num_0.png", "class_0_seed_0_num_1.png",
                                                 "class_0_seed_0_num_2.png"]  # fmt: skip
    assert generate(FakePipe(), plan, tmp_path / "syn", per_class=5, batch=3) == []  # existing files are skipped
    write_fake_npz(tmp_path / "cifar10.npz", 10, 1, 1)
    data = load_dataset(synthetic_cfg(tmp_path))
    assert np.bincount(data.train.targets).tolist() == [6, 0, 6]


def test_synth_without_weights_is_a_clear_error(tmp_path, capsys):
    """(That no core package imports `diffusers` is held by test_layers.py's fresh-interpreter imports.)"""
    from ssl_kd.synth import main

    assert main(["--model", str(tmp_path / "none"), "--classes", "0-9", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no diffusers DiT pipeline" in err and "--model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
