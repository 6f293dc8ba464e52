"""Real DDP on CPU (gloo, accelerate's MULTI_CPU path) with 2 processes started by torchrun: the global batch
is split across processes, so a model without batch statistics trains to the same weights with 1 or 2."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from helpers import CONFIGS, run_cli, ssl_digits_config, torchrun_cli

ARGS = [
    "models.teacher.arch=mlp", "models.teacher.kwargs={hidden: 32, depth: 1}", "stages.teacher.epochs=1",
    "stages.distill.enabled=false", "stages.teacher.augment=none", "experiment.logger.log_every=5",
]  # fmt: skip


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(CONFIGS / "quickstart.yaml", *ARGS, f"experiment.output_dir={one}") == 0
    res = torchrun_cli(CONFIGS / "quickstart.yaml", *ARGS, f"experiment.output_dir={two}", port=29517)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(one / "checkpoints/last.pt", weights_only=True)
    b = torch.load(two / "checkpoints/last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 1397 // 64
    for k, v in a["models"]["teacher"].items():
        assert torch.allclose(v, b["models"]["teacher"][k], atol=1e-5), k
    assert len(b["rng"]) == 2  # every rank's RNG state is in the checkpoint
    # rank 0 alone writes metrics: one record per log interval, not two
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((one / "metrics.jsonl").read_text().splitlines())
    assert a["results"]["teacher"]["last"]["teacher/top1"] == pytest.approx(
        b["results"]["teacher"]["last"]["teacher/top1"], abs=0.01
    )
    assert sys.executable  # ran with this interpreter's packages


# slow: torchrun; FlexMatch's gathered history and FullMatch's max-reduced k are checked on 2 gloo ranks in CI
# (test_ddp_ssl_policies.py), the runner under torchrun by test_two_processes_match_one
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_fullflex_under_ddp_keeps_one_global_history(tmp_path):
    """The SSL step's cross-rank paths (k max-reduced, FlexMatch history gathered from every rank) run under DDP,
    and rank 0 alone writes the records."""
    cfg = ssl_digits_config(tmp_path / "ssl.yaml", "fullflex", iters=12, eval_every=6, checkpoint_every=5, log_every=6)
    out = tmp_path / "ddp"
    res = torchrun_cli(str(cfg), f"experiment.output_dir={out}", port=29519)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ckpt["global_step"] == 12 and len(ckpt["rng"]) == 2
    recs = (out / "metrics.jsonl").read_text().splitlines()
    assert len(recs) == 4  # 2 train + 2 eval records, written once (rank 0)
