"""A stage's extra trainable module (CTKD's learned temperature) is DDP-wrapped like the models: 2 processes reach
the same student and temperature as 1, and the module is saved in the stage's weight file."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import CONFIGS, run_cli, torchrun_cli

ARGS = [
    "models.teacher.arch=mlp", "models.teacher.kwargs={hidden: 32, depth: 1}", "stages.teacher.epochs=1",
    "stages.distill.epochs=1", "stages.teacher.augment=none", "stages.distill.augment=none",
    "stages.distill.temperature_policy=ctkd_global", "stages.distill.ctkd.ramp_epochs=0",
    "experiment.logger.log_every=5", "experiment.logger.progress=false",
]  # fmt: skip


@pytest.mark.slow  # torchrun; DDP = 1 process is held in CI by test_ddp.py
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_learned_temperature_under_ddp_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(CONFIGS / "quickstart.yaml", *ARGS, f"experiment.output_dir={one}") == 0
    res = torchrun_cli(str(CONFIGS / "quickstart.yaml"), *ARGS, f"experiment.output_dir={two}", port=29523)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(one / "checkpoints/distill/last.pt", weights_only=True)
    b = torch.load(two / "checkpoints/distill/last.pt", weights_only=True)
    theta_a, theta_b = a["modules"]["temperature"]["net.theta"], b["modules"]["temperature"]["net.theta"]
    assert theta_a != 1.0  # the temperature trained (adversarially, through the GRL)
    assert torch.allclose(theta_a, theta_b, atol=1e-5)
    for k, v in a["models"]["student"].items():
        assert torch.allclose(v, b["models"]["student"][k], atol=1e-5), k
