"""MCL (winycg/MCL): the `mcl` stage (N peers train, each peer and the ensemble evaluated, bit-exact resume, clear
errors). The losses and the class-aware sampler: tests/unit/test_mcl_parts.py."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from helpers import assert_resume_exact, run_cli, tiny_config

from ssl_kd.data import SamplerConfig
from ssl_kd.engine import read_metrics
from ssl_kd.stages import mcl as mcl_stage


# ------------------------------------------------------------------------------------------------ stage
def write_mcl(path, peers=("net1", "net2"), **stage):
    models = {p: {"arch": "cnn_small", "kwargs": {"width": 8}} for p in peers}
    stages = {"mcl": {"type": "mcl", "train": list(peers), "iters": 6, "batch_size": 16,
                      "optimizer": {"name": "sgd", "lr": 0.05, "nesterov": True},
                      "eval": {"every": 6, "unit": "steps"}, **stage}}  # fmt: skip
    return tiny_config(path, models, stages, name="mcl")


def test_mcl_stage_trains_every_peer_and_reports_the_ensemble(tmp_path, monkeypatch):
    labels_seen, start = [], {}
    orig = mcl_stage.MCL.train_step

    def spy(self, batch):
        labels_seen.append(batch["train"]["y"].tolist())
        return orig(self, batch)

    def keep_start(self):
        for p in self.peers:
            start[p] = {k: v.clone() for k, v in self.raw_model(p).state_dict().items()}
            start[f"embed_{p}"] = {k: v.clone() for k, v in self.modules[f"embed_{p}"].state_dict().items()}

    monkeypatch.setattr(mcl_stage.MCL, "train_step", spy)
    monkeypatch.setattr(mcl_stage.MCL, "on_stage_start", keep_start)
    peers = ("net1", "net2", "net3")
    out = tmp_path / "r"
    assert run_cli(write_mcl(tmp_path / "c.yaml", peers), f"experiment.output_dir={out}") == 0
    assert len(labels_seen) == 6
    for y in labels_seen:  # the stage's default sampler: 8 classes x 2 images in every batch
        assert set(Counter(y).values()) == {2} and len(set(y)) == 8
    train = [r for r in read_metrics(out) if r["kind"] == "train"]
    for k in ("ce", "vcl", "soft_vcl", "icl", "soft_icl", "logit_kd", "acc_net3"):
        assert all(math.isfinite(r[f"train/{k}"]) for r in train), k
    ev = [r for r in read_metrics(out) if r["kind"] == "eval"][-1]
    for name in (*peers, "ensemble"):
        assert 0 <= ev[f"test/{name}/top1"] <= 1
    # every peer and every embedding head moved from its start (one optimizer over all of them)
    saved = torch.load(out / "checkpoints" / "mcl" / "last.pt", weights_only=True)
    assert set(saved["modules"]) == {f"embed_{p}" for p in peers}
    for p in peers:
        assert not torch.equal(saved["models"][p]["fc.weight"], start[p]["fc.weight"]), p
        w = "net.0.weight"
        assert not torch.equal(saved["modules"][f"embed_{p}"][w], start[f"embed_{p}"][w]), p
    # the heads start differently (own seeds), and the ensemble is the mean of the peers' logits
    assert not torch.equal(start["embed_net1"]["net.0.weight"], start["embed_net2"]["net.0.weight"])


def test_mcl_ensemble_is_the_mean_of_the_peers_logits():
    class Net(torch.nn.Linear):
        def predict(self, batch):
            return self(batch["x"])

    stage = mcl_stage.MCL.__new__(mcl_stage.MCL)
    nets = {p: Net(4, 3) for p in ("a", "b")}
    stage.peers = list(nets)
    stage._ctx = type("Ctx", (), {"raw_model": lambda self, n: nets[n]})()
    x = torch.randn(5, 4)
    got = stage.eval_targets()["ensemble"]({"x": x})
    assert torch.allclose(got, (nets["a"](x) + nets["b"](x)) / 2)


def test_mcl_resumes_bit_exact(tmp_path):
    cfg = write_mcl(tmp_path / "c.yaml", iters=4, checkpoint={"every": 2, "unit": "steps"}, eval={"every": 4})
    compare = ["checkpoints/last.pt:models", "checkpoints/mcl/last.pt:modules"]  # both peers and their extra modules
    assert_resume_exact([cfg], 3, tmp_path, compare=compare)


@pytest.mark.parametrize(
    "stage,message",
    [
        ({"train": ["net1"]}, "N >= 2 peer"),
        ({"batch_size": 15}, "not a multiple of sampler.m"),
        ({"sampler": {"streams": ["unlabeled"]}}, "stages.mcl.sampler.streams"),
        ({"batch_size": 24}, "stages.mcl.sampler"),  # 12 classes wanted, digits has 10
        ({"batch_size": 12, "grad_accum": 2, "sampler": {"m": 4}}, "not a multiple of stages.mcl.sampler.m = 4"),
        ({"loss_weights": {"kd": 1.0}}, "stages.mcl.loss_weights"),
    ],
)
def test_mcl_bad_options_are_one_clear_error(tmp_path, capsys, stage, message):
    assert run_cli(write_mcl(tmp_path / "c.yaml", **stage), f"experiment.output_dir={tmp_path / 'r'}") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sampler_block_is_a_stage_key_any_stage_may_use():
    from ssl_kd.config.schema import StageConfig

    cfg = StageConfig(type="supervised", batch_size=32, sampler={"kind": "m_per_class", "m": 4})
    assert cfg.sampler == SamplerConfig(kind="m_per_class", m=4)
    assert StageConfig(type="supervised").sampler.kind == "random"
    with pytest.raises(ValueError, match="multiple of sampler.m = 4"):
        StageConfig(type="supervised", batch_size=30, sampler={"kind": "m_per_class", "m": 4})
