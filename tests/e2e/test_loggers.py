"""W&B in offline mode (real wandb calls, no network) and mixed precision on CPU."""

from __future__ import annotations

import pytest
from helpers import CONFIGS, run_cli

from ssl_kd.engine.run_dir import read_metrics

TINY = ["stages.teacher.epochs=1", "stages.distill.epochs=1"]


def test_wandb_offline_run_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    out = tmp_path / "r"
    assert run_cli(CONFIGS / "quickstart.yaml", *TINY, "experiment.logger.wandb.project=ssl_kd-test",
                   "experiment.logger.wandb.mode=offline", f"experiment.output_dir={out}") == 0  # fmt: skip
    runs = list((tmp_path / "wb").rglob("offline-run-*")) + list(out.rglob("offline-run-*"))
    assert runs, "wandb wrote no offline run"
    files = [p for r in runs for p in r.rglob("*.wandb")]
    assert files and files[0].stat().st_size > 0
    printed = capsys.readouterr().out  # where the offline run went, and how to upload it
    assert any(f"wandb sync {r}" in printed for r in runs)


@pytest.mark.parametrize("precision", ["bf16"])
def test_mixed_precision_on_cpu(tmp_path, precision):
    """Autocast through accelerate (fp16 needs a GPU: on CPU it is refused, tests/e2e/test_user_errors.py)."""
    out = tmp_path / precision
    args = ["stages.teacher.epochs=3", "stages.distill.enabled=false", f"experiment.precision={precision}"]
    assert run_cli(CONFIGS / "quickstart.yaml", *args, f"experiment.output_dir={out}") == 0
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert evals[-1]["test/teacher/top1"] > 0.5
