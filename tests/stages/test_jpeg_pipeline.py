"""Training on real JPEG photos through the large-image path (`data.transform`): plants_jpeg (train/ + val/ class
folders of 265-500 px photos) at a reduced output size with 2 DataLoader workers: a supervised run resumes bit-exact,
and an SSL stage (weak + strong views) and a rotation stage train; the device pipeline (on the CPU) resumes
bit-exact too. Skipped when plants_jpeg is not under $SSL_KD_DATA or ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from helpers import SHARED_DATA, assert_resume_exact, run_cli

from ssl_kd.engine import read_metrics


@pytest.fixture(scope="module")
def plants() -> Path:
    for base in (os.environ.get("SSL_KD_DATA"), SHARED_DATA):
        if base and (Path(base) / "plants_jpeg" / "train").is_dir():
            return Path(base) / "plants_jpeg"
    pytest.skip("plants_jpeg not found under $SSL_KD_DATA or ../shared/data")


def write(path: Path, plants: Path, stage: dict, models: dict | None = None, **data) -> Path:
    cfg = {
        "experiment": {"name": "jpeg", "seed": 3, "logger": {"progress": False, "log_every": 1}},
        "data": {"dataset": "image_folder", "path": str(plants), "normalize": "imagenet", "num_workers": 2,
                 "limit_test": 20, "transform": {"size": 32}, **data},
        "models": models or {"net": {"arch": "cnn_small", "kwargs": {"width": 8}}},
        "stages": {"s": {"train": ["net"], "eval": {"every": 4, "unit": "steps", "batch_size": 20}, **stage}},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_supervised_on_jpegs_resumes_bit_exact_with_workers(tmp_path, plants):
    stage = {"type": "supervised", "iters": 4, "batch_size": 12, "checkpoint": {"every": 2, "unit": "steps"}}
    full, _ = assert_resume_exact([write(tmp_path / "c.yaml", plants, stage)], 3, tmp_path, metrics=True)
    ev = [r for r in read_metrics(full) if r["kind"] == "eval"]
    assert ev and "test/net/top1" in ev[-1]


def test_ssl_stage_trains_on_weak_and_strong_crops(tmp_path, plants):
    stage = {"type": "fixmatch", "iters": 2, "batch_size": 4, "uratio": 2}
    cfg = write(tmp_path / "c.yaml", plants, stage, ssl={"num_labels": 20})
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 0
    train = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "train"]
    assert len(train) == 2 and {"train/sup", "train/unsup"} <= set(train[-1])


def test_rotation_stage_trains_on_crops(tmp_path, plants):
    net = {"arch": "multi_exit", "kwargs": {"backbone": "resnet8", "exits": [3], "exit_label_factor": 4}}
    stage = {"type": "hsakd_teacher", "iters": 2, "batch_size": 4}
    cfg = write(tmp_path / "c.yaml", plants, stage, models={"net": net})
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'r'}") == 0
    assert [r for r in read_metrics(tmp_path / "r") if r["kind"] == "train"]


def test_device_pipeline_on_jpegs_resumes_bit_exact_and_runs_ssl(tmp_path, plants):
    """`data.pipeline: device`: decode + crop per batch on the device (here the CPU), no workers."""
    stage = {"type": "supervised", "iters": 4, "batch_size": 12, "checkpoint": {"every": 2, "unit": "steps"}}
    cfg = write(tmp_path / "c.yaml", plants, stage, pipeline="device", num_workers=0)
    assert_resume_exact([cfg], 3, tmp_path, metrics=True)
    ssl = {"type": "fixmatch", "iters": 2, "batch_size": 4, "uratio": 2}
    cfg = write(tmp_path / "s.yaml", plants, ssl, pipeline="device", num_workers=0, ssl={"num_labels": 20})
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 's'}") == 0
