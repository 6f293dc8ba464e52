"""The large-image path under DDP: 2 processes (torchrun, gloo on CPU) train on plants_jpeg crops to the weights of 1
process, because every sample's crop, flip and position in the global batch are functions of (seed, step) only.
Slow tier (two interpreter starts and torchrun): SSL_KD_SLOW=1. Skipped without plants_jpeg or torchrun."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import SHARED_DATA, run_cli, torchrun_cli


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.parametrize("pipeline", ["host", "device"])
def test_two_processes_match_one_on_jpeg_crops(tmp_path, pipeline):
    plants = next((Path(b) / "plants_jpeg" for b in (os.environ.get("SSL_KD_DATA"), SHARED_DATA)
                   if b and (Path(b) / "plants_jpeg" / "train").is_dir()), None)  # fmt: skip
    if plants is None:
        pytest.skip("plants_jpeg not found under $SSL_KD_DATA or ../shared/data")
    cfg = {
        "experiment": {"name": "ddp", "seed": 1, "logger": {"progress": False, "log_every": 1}},
        "data": {"dataset": "image_folder", "path": str(plants), "normalize": "imagenet", "limit_test": 20,
                 "num_workers": 1 if pipeline == "host" else 0, "pipeline": pipeline,
                 "transform": {"size": 16, "color_jitter": 0.3 if pipeline == "host" else 0}},
        "models": {"net": {"arch": "mlp", "kwargs": {"hidden": 32, "depth": 1}}},  # no batch statistics
        "stages": {"s": {"type": "supervised", "train": ["net"], "iters": 3, "batch_size": 8}},
    }  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(path, f"experiment.output_dir={one}") == 0
    res = torchrun_cli(str(path), f"experiment.output_dir={two}", port=29531)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(one / "checkpoints/last.pt", weights_only=True)["models"]["net"]
    b = torch.load(two / "checkpoints/last.pt", weights_only=True)["models"]["net"]
    for k, v in a.items():
        assert torch.allclose(v, b[k], atol=1e-5), k
