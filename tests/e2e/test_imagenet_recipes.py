"""The ImageNet recipes (configs/imagenet) on real JPEG photos: plants_jpeg (400 photos, 265-500 px, train/ + val/
class folders with per-split metadata CSVs) as `data.dataset=image_folder` at a reduced size, with the real
large-image transforms and DataLoader workers. Skipped when plants_jpeg is under neither $SSL_KD_DATA nor the
shared data folder. Every recipe's dry run at paper size and its few steps on fake files are in
test_shipped_configs.py."""

from __future__ import annotations

import json

import pytest
from helpers import CONFIGS, real_data_root, run_cli, small_model

from ssl_kd.config import load_yaml
from ssl_kd.engine import read_metrics

RECIPES = sorted((CONFIGS / "imagenet").glob("*.yaml"))
CI_RECIPES = {"kd_r34_r18"}  # the rest in the slow tier (their stage types run on CIFAR configs in CI)


@pytest.fixture(scope="module")
def plants():
    root = real_data_root("plants_jpeg/train/metadata.csv")
    if root is None:
        pytest.skip("plants_jpeg not found under $SSL_KD_DATA or the shared data folder")
    return root / "plants_jpeg"


def plants_overrides(path, plants) -> list[str]:
    """The recipe on plants_jpeg at 32 px, 2 workers, 2 steps per stage, small stand-in models, no download."""
    raw = load_yaml(path)
    out = ["data.dataset=image_folder", f"data.path={plants}", "data.image_size=32", "data.num_workers=2",
           "experiment.logger.progress=false"]  # fmt: skip
    for name, spec in raw["models"].items():
        arch, kwargs = small_model(spec)
        out += [f"models.{name}.arch={arch}", f"models.{name}.kwargs={json.dumps(kwargs)}"]
        if spec.get("pretrained"):
            out.append(f"models.{name}.pretrained=null")
    for name, st in raw["stages"].items():
        out += [f"stages.{name}.epochs=None", f"stages.{name}.iters=2", f"stages.{name}.batch_size=8",
                f"stages.{name}.eval.batch_size=50"]  # fmt: skip
        if "teacher" in raw["stages"] and name == "teacher":
            out.append("stages.teacher.enabled=true")  # fit the teacher to the tree's classes first
        if (st.get("data") or {}).get("train_source"):  # DM-KD: the photos stand in for the generated images
            out.append(f"stages.{name}.data.train_source={{kind: image_folder, path: {plants / 'train'}}}")
    return out


@pytest.mark.parametrize(
    "path",
    [p if p.stem in CI_RECIPES else pytest.param(p, marks=pytest.mark.slow) for p in RECIPES],
    ids=lambda p: p.stem,
)
def test_a_recipe_trains_on_real_photos(path, plants, tmp_path):
    out = tmp_path / "run"
    assert run_cli(path, *plants_overrides(path, plants), f"experiment.output_dir={out}") == 0
    records = read_metrics(out)
    ran = {r["stage"] for r in records}
    assert ran == {n for n, s in load_yaml(path)["stages"].items() if s.get("enabled", True) or n == "teacher"}
    assert any(r.get("kind") == "eval" for r in records)


def test_dynamic_mlp_on_real_photos_with_their_dates(plants, tmp_path, capsys):
    """DynamicMLP (image + the observation date) on plants_jpeg: RandomResizedCrop views, the dates from each
    split's metadata.csv."""
    cfg = CONFIGS / "dynamic_mlp" / "plants32_resnet18_c.yaml"
    args = [cfg, "data.dataset=image_folder", f"data.path={plants}", "data.transform={}", "data.image_size=32",
            "data.metadata.csv=metadata.csv", "data.normalize=imagenet", "stages.train.epochs=None",
            "stages.train.iters=2", "stages.train.batch_size=16", "data.num_workers=2",
            f"experiment.output_dir={tmp_path / 'r'}"]  # fmt: skip
    assert run_cli(*args, "--dry-run") == 0
    plan = capsys.readouterr().out
    assert "RandomResizedCrop 32" in plan and "300 train / 100 test" in plan
    assert run_cli(*args) == 0
    assert {r["stage"] for r in read_metrics(tmp_path / "r")} == {"train"}
