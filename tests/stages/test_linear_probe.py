"""The linear probe after any stage, on another dataset than the run's (per-stage `data`), with the backbone's BN in
train (reference) or eval mode, resumed exactly; and the sharded one-pass iteration stages use to fill memories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CONFIGS, assert_resume_exact, run_cli, write_fake_npz

from ssl_kd.data import ImageSet, ViewDataset
from ssl_kd.engine.run_dir import read_metrics
from ssl_kd.engine.streams import one_pass

PROBE = """
_base_: {base}
models:
  net: {{arch: cnn_small, kwargs: {{width: 8}}}}
stages:
  train: {{type: supervised, train: [net], iters: 8, batch_size: 32, eval: {{batch_size: 400}}}}
  probe: {{type: linear_probe, uses: [net], iters: 6, batch_size: 16, data: {{dataset: npz, path: {npz}}},
          eval: {{every: 3, unit: steps, batch_size: 64}}, checkpoint: {{every: 2, unit: steps}}}}
experiment: {{logger: {{progress: false, log_every: 3}}}}
"""


@pytest.fixture
def probe_yaml(tmp_path):
    npz = write_fake_npz(tmp_path / "target.npz", num_classes=4, per_class_train=12, per_class_test=5, size=16)
    path = tmp_path / "probe.yaml"
    path.write_text(PROBE.format(base=CONFIGS / "_base_" / "digits.yaml", npz=npz))
    return path


def _bn_buffers(state: dict, prefix: str = "") -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and "running_" in k}


def test_probe_on_another_dataset_leaves_the_model_alone_and_resumes_exactly(probe_yaml, tmp_path, capsys):
    assert run_cli(probe_yaml, f"experiment.output_dir={tmp_path / 'plan'}", "--dry-run") == 0
    assert "data: npz (48 train / 20 test, 4 classes)" in capsys.readouterr().out
    # the probe's head and backbone (BN statistics included) resume exactly from a crash at its step 3
    compare = ["checkpoints/last.pt:models", "checkpoints/probe/last.pt:modules.probe"]
    full, _ = assert_resume_exact([probe_yaml], 8 + 3, tmp_path, compare=compare)

    trained = torch.load(full / "checkpoints/train/last.pt", weights_only=True)["models"]["net"]
    final = torch.load(full / "checkpoints/last.pt", weights_only=True)["models"]["net"]
    assert all(torch.equal(trained[k], final[k]) for k in trained)  # the run's model, BN statistics included
    probe = torch.load(full / "checkpoints/probe/last.pt", weights_only=True)["modules"]["probe"]
    assert probe["head.weight"].shape == (4, 32)  # a fresh head for the probe data's 4 classes
    weights = [k for k in trained if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(probe[f"backbone.{k}"], trained[k]) for k in weights)  # frozen
    moved = _bn_buffers(probe, "backbone.")
    assert any(not torch.equal(v, trained[k]) for k, v in moved.items())  # bn_mode train: stats adapted

    evals = [r for r in read_metrics(full) if r["kind"] == "eval" and r["stage"] == "probe"]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(round(r["test/net/top1"] * 20, 6) == round(r["test/net/top1"] * 20) for r in evals)  # 20 test images

    eval_mode = tmp_path / "eval"
    assert run_cli(probe_yaml, "stages.probe.bn_mode=eval", f"experiment.output_dir={eval_mode}") == 0
    frozen = torch.load(eval_mode / "checkpoints/probe/last.pt", weights_only=True)["modules"]["probe"]
    assert all(torch.equal(v, trained[k]) for k, v in _bn_buffers(frozen, "backbone.").items())


def test_one_pass_covers_every_sample_once_in_equal_batches_on_every_rank():
    images = ImageSet(np.zeros((11, 4, 4, 3), np.uint8), np.arange(11) % 3)
    ds = ViewDataset(images, {"x": lambda img, seed: torch.tensor([float(seed % 1000)])}, np.arange(11)[::-1].copy())
    shards = [list(one_pass(ds, 2, seed=5, rank=r, world_size=3, num_workers=0, pin_memory=False)) for r in range(3)]
    assert [[len(b["idx"]) for b in s] for s in shards] == [[2, 2]] * 3  # 4 positions per rank: 11 padded to 12
    seen = [i for s in shards for b in s for i, v in zip(b["idx"].tolist(), b["valid"].tolist()) if v]
    assert sorted(seen) == list(range(11))
    again = list(one_pass(ds, 2, seed=5, rank=1, world_size=3, num_workers=0, pin_memory=False))
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(shards[1], again))  # views seeded by position
