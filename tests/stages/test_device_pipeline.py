"""The device-resident data path (`data.pipeline: device`) in runs: an SSL run on it resumes bit-exactly, and the
compiled step trains (slow). The batched ops and step pieces: tests/unit/test_device_ops.py."""

from __future__ import annotations

import pytest
import torch
from helpers import CONFIGS, assert_resume_exact, run_cli

from ssl_kd.data import (
    DataConfig,
)

SSL = """
_base_: {base}
data: {{ssl: {{num_labels: 20}}, pipeline: device}}
models:
  net: {{arch: cnn_small, kwargs: {{width: 16}}}}
stages:
  ssl: {{type: fullflex, train: [net], iters: 16, batch_size: 10, uratio: 2, ema: {{decay: 0.9}},
        eval: {{every: 8, batch_size: 400}}, checkpoint: {{every: 5}}}}
experiment: {{logger: {{log_every: 4, progress: false}}, channels_last: true}}
"""


def test_device_pipeline_run_resumes_bit_exactly(tmp_path):
    cfg = tmp_path / "ssl.yaml"
    cfg.write_text(SSL.format(base=CONFIGS / "_base_" / "digits.yaml"))
    assert_resume_exact([cfg], 12, tmp_path)
    # and the host path is still the default
    assert DataConfig().pipeline == "host"


@pytest.mark.slow
def test_compiled_step_trains(tmp_path):
    """`experiment.compile` wraps the trained model's forward in torch.compile (slow on CPU: set SSL_KD_SLOW=1)."""
    out = tmp_path / "c"
    args = [
        CONFIGS / "quickstart.yaml",
        "stages.teacher.epochs=1",
        "stages.distill.enabled=false",
        "experiment.compile=default",
        "experiment.logger.progress=false",
        f"experiment.output_dir={out}",
    ]
    assert run_cli(*args) == 0
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in ckpt["models"]["teacher"])  # plain weights are saved
