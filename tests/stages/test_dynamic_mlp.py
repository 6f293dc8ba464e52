"""DynamicMLP (issue 10) in runs: metadata mixed with the images' lambda and permutation in the supervised stage,
the reference's label smoothing (off_target) on plain and mixed batches against a loop, an exact resume of a
metadata run, and bad metadata in the user's file as one clear error. The encoding, fusion heads and metadata
readers: tests/unit/test_dynamic_mlp_parts.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import assert_resume_exact, run_cli, write_fake_plants

from ssl_kd.models import create_model


def _stub_supervised(cfg, net, num_classes):
    """A Supervised stage around `net` without a run: forward records the logits it returns."""
    from ssl_kd.stages.supervised import Supervised

    stage = Supervised.__new__(Supervised)
    seen = {}

    def forward(name, part, x=None, **kw):
        seen.update(x=x, **kw)
        seen["logits"] = out = net(part["x"] if x is None else x, **{"meta": part["meta"], **kw})
        return out

    stage.__dict__.update(cfg=cfg, net="net", forward=forward)
    services = type("S", (), {"data": type("D", (), {"num_classes": num_classes})()})()
    stage._ctx = type("Ctx", (), {"raw_model": lambda self, n: net, "data_services": lambda self: services})()
    return stage, seen


# ================================================================================================ mixing
def test_supervised_stage_mixes_meta_with_the_images_lambda_and_permutation():
    """One mixup draw: the images, the one-hot labels and `meta` all get lam * t + (1 - lam) * t[perm]."""
    from ssl_kd.data import sample_mix
    from ssl_kd.stages.supervised import SupervisedConfig

    net = create_model("resnet8", 5, head={"type": "dynamic_mlp", "meta_dim": 4, "mlp_d": 8, "mlp_h": 4})
    cfg = SupervisedConfig(type="supervised", train=["net"], label_smoothing=0.1, mix={"kind": "mixup", "alpha": 0.4})
    stage, seen = _stub_supervised(cfg, net, 5)
    x, meta, y = torch.randn(6, 3, 16, 16), torch.randn(6, 4), torch.arange(6) % 5
    torch.manual_seed(3)
    stage._mixed_step({"x": x, "y": y, "meta": meta, "idx": torch.arange(6)})
    torch.manual_seed(3)
    p = sample_mix(cfg.mix, 6, (16, 16))
    assert 0 < p.lam < 1 and not torch.equal(p.perm, torch.arange(6))
    assert torch.allclose(seen["x"], p.lam * x + (1 - p.lam) * x[p.perm])
    assert torch.allclose(seen["meta"], p.lam * meta + (1 - p.lam) * meta[p.perm])


# ================================================================================================ label smoothing
def reference_ls_loss(logits: torch.Tensor, target: torch.Tensor, eps: float, off: str) -> float:
    """A loop transcription of ylingfeng/DynamicMLP@773197c5 utils.py LabelSmoothingLoss (off = "off_target":
    true_dist = eps / (C - 1) off the target, 1 - eps on it) and of the uniform convention (eps / C everywhere plus
    1 - eps on the target): mean over rows of -sum_c t_c log softmax(z)_c."""
    total = 0.0
    for row, y in zip(logits.double().tolist(), target.tolist()):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        c = len(row)
        for k, v in enumerate(row):
            if off == "off_target":
                t = 1 - eps if k == y else eps / (c - 1)
            else:
                t = eps / c + (1 - eps if k == y else 0.0)
            total -= t * (v - lse)
    return total / len(logits)


@pytest.mark.parametrize("mix", [{"kind": "none"}, {"kind": "mixup", "alpha": 0.4}, {"kind": "cutmix", "alpha": 1.0},
                                 {"kind": "mixup", "alpha": 0.4, "prob": 0.0}])  # fmt: skip
@pytest.mark.parametrize("convention", ["off_target", "uniform"])
def test_label_smoothing_convention_against_the_reference_loop(mix, convention):
    """C = 32, eps 0.1. Plain batches (mix none, or not drawn): the loop's loss on the logits. Mixed batches:
    lam loop(z, y) + (1 - lam) loop(z, y[perm]), the reference train.py's mixup loss (the same for CutMix's lam)."""
    from ssl_kd.data import sample_mix
    from ssl_kd.stages.supervised import SupervisedConfig

    torch.manual_seed(0)
    net = create_model("resnet8", 32, head={"type": "dynamic_mlp", "meta_dim": 4, "mlp_d": 8, "mlp_h": 4})
    net.fc.weight.data.mul_(5)  # spread logits: near-uniform ones give the same loss in both conventions
    cfg = SupervisedConfig(type="supervised", train=["net"], label_smoothing=0.1, label_smoothing_convention=convention,
                           mix=mix)  # fmt: skip
    stage, seen = _stub_supervised(cfg, net, 32)
    x, meta, y = torch.randn(6, 3, 16, 16), torch.randn(6, 4), torch.tensor([0, 5, 31, 7, 7, 12])
    torch.manual_seed(3)
    losses, diag = stage.train_step({"train": {"x": x, "y": y, "meta": meta, "idx": torch.arange(6)}})
    torch.manual_seed(3)
    p = sample_mix(cfg.mix, 6, (16, 16)) if mix["kind"] != "none" else None
    z = seen["logits"].logits.detach()
    if p is None:
        want = reference_ls_loss(z, y, 0.1, convention)
    else:
        assert 0 < p.lam < 1
        ref_a, ref_b = reference_ls_loss(z, y, 0.1, convention), reference_ls_loss(z, y[p.perm], 0.1, convention)
        want = p.lam * ref_a + (1 - p.lam) * ref_b
    assert losses["ce"].item() == pytest.approx(want, abs=1e-5)
    # the two conventions differ on these logits by far more than the tolerance: the test tells them apart
    other = "uniform" if convention == "off_target" else "off_target"
    assert abs(reference_ls_loss(z, y, 0.1, other) - reference_ls_loss(z, y, 0.1, convention)) > 1e-3


# ================================================================================================ runs
TINY = """
data:
  dataset: ucsc_plants32
  root: {root}
  num_workers: 0
  metadata: {{use: [temporal], synthetic_location: null}}
experiment: {{seed: 2, logger: {{progress: false, log_every: 1}}}}
models:
  net:
    arch: cifar_resnet18
    kwargs: {{width: 4}}
    head: {{type: dynamic_mlp, variant: c, meta_dim: 2, mlp_d: 16, mlp_h: 8}}
stages:
  s:
    type: supervised
    train: [net]
    epochs: 2
    steps_per_epoch: 4
    batch_size: 8
    label_smoothing: 0.1
    label_smoothing_convention: off_target
    mix: {{kind: mixup, alpha: 0.4, prob: 0.5}}
    optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}}
    scheduler: {{name: cosine, interval: step, warmup: 2}}
    eval: {{every: 2, batch_size: 60}}
    checkpoint: {{every: 3, unit: steps}}
"""


def test_metadata_run_resumes_bit_exact_and_bad_metadata_is_one_clear_error(tmp_path, fake_data_root, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY.format(root=fake_data_root))
    full, _ = assert_resume_exact([cfg], 5, tmp_path)
    a = torch.load(full / "checkpoints/last.pt", weights_only=True)["models"]["net"]
    assert any(k.startswith("fusion.") for k in a)  # the fusion head's weights are among those compared
    # bad metadata in the user's file: exit 2, one line naming the file and row, nothing written
    bad = tmp_path / "bad"
    bad.mkdir()
    write_fake_plants(bad / "ucsc_plants32.npz")
    with np.load(bad / "ucsc_plants32.npz") as z:
        arrays = dict(z)
    arrays["date_train"] = arrays["date_train"].copy()
    arrays["date_train"][7] = "2021-02-30"
    np.savez(bad / "ucsc_plants32.npz", **arrays)
    capsys.readouterr()
    assert run_cli(cfg, f"data.root={bad}", f"experiment.output_dir={tmp_path / 'o'}") == 2
    err = capsys.readouterr().err
    assert "ucsc_plants32" in err and "row 7: date '2021-02-30'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
