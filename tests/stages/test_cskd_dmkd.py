"""Teacher-student III: the ViT student and dense logits, CSKD's CKF target / patch loss / beta schedule and stage,
DM-KD's synthetic data source, the kd stage with CE weight 0 (no label read), mixing and the teacher's no_grad, and
`python -m ssl_kd.synth` without weights."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIGS, ROOT, assert_resume_exact, run_cli, tiny_config, write_fake_npz, write_synthetic_folder

from ssl_kd.data import SYNTHETIC_NAME_REGEX, DataConfig, load_dataset
from ssl_kd.data.synthetic import parse_label
from ssl_kd.engine import read_metrics
from ssl_kd.errors import UserError
from ssl_kd.losses import align_dense, ckf_target, patch_distill_loss
from ssl_kd.models import create_model
from ssl_kd.stages import kd as kd_stage

QUICK = CONFIGS / "quickstart.yaml"
TINY_VIT = {"image_size": 8, "patch_size": 2, "depth": 1, "dim": 32, "heads": 2}  # digits: a 4x4 patch grid


# ------------------------------------------------------------------------------------------------ models
def test_vit_outputs_class_token_logits_dense_logits_and_patch_maps():
    m = create_model("vit_cifar_tiny", 7, dist_token=True).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x, return_feats=True, return_dense=True)
    assert out.logits.shape == (2, 7) and out.feat.shape == (2, 192)
    assert out.aux["dist"].shape == (2, 7) and out.aux["dense"].shape == (2, 7, 8, 8)
    assert len(out.feats) == 7 and out.feats[-1].shape == (2, 192, 8, 8)  # embedding + 6 blocks
    assert "dense" not in m(x).aux  # dense logits only when asked
    # the dense logits are the patch head on each patch token (tokens: cls, dist, then row-major patches)
    tokens, _ = m.tokens(x)
    for i, j in [(0, 0), (3, 5), (7, 7)]:
        assert torch.allclose(out.aux["dense"][:, :, i, j], m.patch_head(tokens[:, 2 + 8 * i + j]), atol=1e-6)
    pred = m.predict({"x": x})
    assert list(pred) == ["avg", "cls", "dist"]  # DeiT's test-time rule is the headline
    assert torch.allclose(pred["avg"], (out.logits + out.aux["dist"]) / 2)
    plain = create_model("vit", 5, **TINY_VIT)
    assert plain.predict({"x": torch.randn(1, 3, 8, 8)}).shape == (1, 5)
    with pytest.raises(ValueError, match="image_size"):
        plain(torch.randn(1, 3, 16, 16))


def test_vit_presets_and_bad_options():
    def count(m):  # DeiT's own parameter counts (timm), i.e. without our patch head
        return sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in m.patch_head.parameters())

    assert count(create_model("deit_tiny", 1000)) == 5_717_416
    assert count(create_model("deit_small", 1000)) == 22_050_664
    assert count(create_model("deit_tiny", 1000, dist_token=True)) == 5_910_800  # deit_tiny_distilled
    for name, grid, dim in [("vit_cifar_small", 8, 384), ("deit_tiny", 14, 192), ("deit_small", 14, 384)]:
        m = create_model(name, 10)
        assert (m.grid, m.feat_dim) == (grid, dim)
    assert len(create_model("vit_cifar_small", 10).encoder.layers) == 12
    with pytest.raises(UserError, match="patch_size"):
        create_model("vit", 10, image_size=32, patch_size=5)
    with pytest.raises(UserError, match="heads"):
        create_model("vit", 10, dim=100, heads=3)


@pytest.mark.parametrize("arch", ["resnet8x4", "wrn_16_2", "mobilenetv2", "vgg8", "shufflenetv2", "cnn_small"])
def test_dense_teacher_logits_average_to_the_pooled_logits(arch):
    torch.manual_seed(0)
    m = create_model(arch, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x, return_dense=True)
    dense = out.aux["dense"]
    assert dense.ndim == 4 and dense.shape[:2] == (2, 10)
    assert torch.allclose(dense.mean(dim=(2, 3)), out.logits, atol=1e-5)  # linear head: mean of dense = pooled
    assert torch.equal(out.logits, m(x).logits)  # asking for dense logits changes nothing else
    _, fmap = m.forward_map(x)
    i, j = dense.shape[-2] - 1, 0
    assert torch.allclose(dense[:, :, i, j], m.fc(fmap[:, :, i, j]), atol=1e-5)  # the classifier at one position


def test_dense_forward_updates_batchnorm_once_and_mlp_has_none():
    torch.manual_seed(0)
    a, b = create_model("wrn_16_2", 10), create_model("wrn_16_2", 10)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 32, 32)
    a(x)
    b(x, return_dense=True)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(TypeError, match="no dense logits"):
        create_model("mlp", 10)(x, return_dense=True)


# ------------------------------------------------------------------------------------------------ CSKD losses
def test_ckf_target_at_beta_0_and_1_and_in_between():
    torch.manual_seed(0)
    local, glob = torch.randn(2, 5, 3, 3), torch.randn(2, 5)
    q0, q1 = ckf_target(local, glob, 0.0, 2.0), ckf_target(local, glob, 1.0, 2.0)
    assert torch.allclose(q0, F.softmax(local / 2.0, dim=1))
    assert torch.allclose(q1, F.softmax(glob / 2.0, dim=1)[:, :, None, None].expand_as(q1))
    q = ckf_target(local, glob, 0.3)
    assert torch.allclose(q.sum(dim=1), torch.ones(2, 3, 3))
    # by hand: local logits (0, ln 3) -> (1/4, 3/4); global (0, 0) -> (1/2, 1/2); beta 0.5 -> (3/8, 5/8)
    hand = ckf_target(torch.tensor([0.0, math.log(3)]).reshape(1, 2, 1, 1), torch.zeros(1, 2), 0.5)
    assert torch.allclose(hand.flatten(), torch.tensor([3 / 8, 5 / 8]))


def _patch_loss_loop(s, q, tau, kind):
    """Transcription: for every image and position, the loss between one logit vector and one target vector."""
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[2]):
            for j in range(s.shape[3]):
                z, p = s[b, :, i, j].tolist(), q[b, :, i, j].tolist()
                if kind == "hard":
                    k = max(range(len(p)), key=lambda c: p[c])
                    lse = math.log(sum(math.exp(v) for v in z))
                    total += lse - z[k]
                else:
                    lse = math.log(sum(math.exp(v / tau) for v in z))
                    term = sum(-pc * (zc / tau - lse) for pc, zc in zip(p, z))
                    if kind == "kl":
                        term += sum(pc * math.log(pc) for pc in p if pc > 0)
                    total += tau * tau * term
                n += 1
    return total / n


@pytest.mark.parametrize("kind", ["soft_ce", "kl", "hard"])
def test_patch_loss_matches_a_loop_transcription(kind):
    torch.manual_seed(1)
    s = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    q = ckf_target(torch.randn(2, 4, 3, 2), torch.randn(2, 4), 0.4, 1.5).double()
    got = patch_distill_loss(s, q, 1.5, kind)
    assert got.item() == pytest.approx(_patch_loss_loop(s, q, 1.5, kind), rel=1e-5)


def test_align_dense():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)
    ps, pt = align_dense(s, t, "pool_student")
    assert pt is t and torch.allclose(ps[:, :, 1, 0], s[:, :, 2:4, 0:2].mean(dim=(2, 3)))
    rs, rt = align_dense(s, t, "resize_teacher", "nearest")
    assert rs is s and rt.shape == (2, 3, 4, 4) and torch.equal(rt[:, :, 3, 1], t[:, :, 1, 0])
    same = torch.randn(2, 3, 4, 4)
    assert align_dense(s, same)[1] is same


# ------------------------------------------------------------------------------------------------ stages
@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert run_cli(QUICK, "stages.teacher.epochs=1", "stages.distill.enabled=false",
                   "experiment.logger.progress=false", f"experiment.output_dir={out}") == 0  # fmt: skip
    return out / "checkpoints" / "teacher" / "last.pt"


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


def test_cskd_stage_beta_schedule_and_patch_term(tmp_path, teacher_file):
    """cnn_small's last map on 8 px digits is 2x2; the ViT's patch grid 4x4 is pooled to it."""
    cfg = write_config(tmp_path / "c.yaml", teacher_file, {"arch": "vit", "kwargs": TINY_VIT}, {"type": "cskd"})
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 0
    recs = train_records(tmp_path / "r")
    assert [r["train/beta"] for r in recs] == pytest.approx([k / 8 for k in range(8)])  # linear 0 -> 1 per step
    assert all(math.isfinite(r["train/patch"]) and r["train/patch"] > 0 for r in recs)
    evals = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "eval"]
    assert "test/student/top1" in evals[-1]
    # a cosine per-epoch beta is one config key away
    cfg2 = write_config(tmp_path / "c2.yaml", teacher_file, {"arch": "vit", "kwargs": TINY_VIT},
                        {"type": "cskd", "beta": {"shape": "cosine", "unit": "epoch"}, "iters": None, "epochs": 2,
                         "eval": {"every": 2}}, data={"limit_train": 96})  # fmt: skip
    assert run_cli(cfg2, f"experiment.output_dir={tmp_path / 'r2'}") == 0
    betas = sorted({round(r["train/beta"], 6) for r in train_records(tmp_path / "r2")})
    assert betas == [0.0, 0.5]  # epochs 0, 1 of 2: (1 - cos(pi f)) / 2 at f = 0, 1/2


def test_cskd_distillation_token_baseline_and_resume(tmp_path, teacher_file):
    """DeiT-style: distillation token, hard teacher labels, no patch term; kill mid-run + resume = same weights."""
    student = {"arch": "vit", "kwargs": {**TINY_VIT, "dist_token": True}}
    stage = {
        "type": "cskd", "token": "dist", "token_kd": "hard", "loss_weights": {"ce": 0.5, "kd": 0.5, "patch": 0.0},
        "iters": 10, "checkpoint": {"every": 4, "unit": "steps"}, "eval": {"every": 10, "unit": "steps"},
    }  # fmt: skip
    cfg = write_config(tmp_path / "d.yaml", teacher_file, student, stage)
    full, _ = assert_resume_exact([cfg], 6, tmp_path)
    assert "train/patch" not in train_records(full)[0]
    assert "test/student/dist/top1" in [r for r in read_metrics(full) if r["kind"] == "eval"][-1]


def test_cskd_bad_configs(tmp_path, teacher_file, capsys):
    cfg = write_config(tmp_path / "e.yaml", teacher_file, {"arch": "vit", "kwargs": TINY_VIT},
                       {"type": "cskd", "token": "dist"})  # fmt: skip
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 2
    assert "dist_token: true" in capsys.readouterr().err
    cfg = write_config(tmp_path / "f.yaml", teacher_file, {"arch": "vit", "kwargs": TINY_VIT},
                       {"type": "cskd", "loss_weights": {"patches": 1.0}})  # fmt: skip
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
        seen["teacher_grads"] = [p.grad for p in self.runner.models["teacher"].parameters()]
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


def test_synth_without_weights_is_a_clear_error_and_stays_out_of_the_core_imports(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssl_kd.synth", "--model", str(tmp_path / "none"), "--classes",
                           "0-9", "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no diffusers DiT pipeline" in proc.stderr and "--model" in proc.stderr
    assert not (tmp_path / "o").exists()
    code = "import sys, ssl_kd.run, ssl_kd.stages, ssl_kd.data; print('diffusers' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout.strip() == "False"
    )
