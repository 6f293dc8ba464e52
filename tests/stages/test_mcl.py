"""MCL (winycg/MCL): the supervised-contrastive log-prob, ICL / VCL and their soft variants against loop-based
transcriptions and hand values, the class-aware sampler (m per class, determinism, process shares), and the `mcl`
stage (N peers train, each peer and the ensemble evaluated, bit-exact resume, clear errors)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_resume_exact, run_cli, tiny_config

from ssl_kd.data import MPerClassSampler, SamplerConfig, mix_seed
from ssl_kd.engine import read_metrics
from ssl_kd.losses import ensemble_kd_loss, kl_t, mcl_losses, sup_contrastive_loss
from ssl_kd.stages import mcl as mcl_stage


# ------------------------------------------------------------------------------------------------ losses
def loop_sup_con(s: torch.Tensor, y: torch.Tensor) -> float:
    """The reference formula anchor by anchor: positives = same label, other column; denominator = every column
    but the anchor's own."""
    n, total = s.shape[0], 0.0
    for a in range(n):
        denom = math.log(sum(math.exp(float(s[a, k])) for k in range(n) if k != a))
        pos = [k for k in range(n) if k != a and int(y[k]) == int(y[a])]
        total += -sum(float(s[a, k]) - denom for k in pos) / len(pos)
    return total / n


def loop_kl_t(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    total = 0.0
    for r in range(s.shape[0]):
        ps = [math.exp(float(v) / temp) for v in s[r]]
        pt = [math.exp(float(v) / temp) for v in t[r]]
        zs, zt = sum(ps), sum(pt)
        total += sum((q / zt) * math.log((q / zt) / (p / zs)) for p, q in zip(ps, pt))
    return temp**2 * total / s.shape[0]


def test_sup_contrastive_hand_values():
    y = torch.tensor([0, 0, 1, 1])
    # every logit 0: each positive has probability 1/3 among the 3 other columns
    assert float(sup_contrastive_loss(torch.zeros(4, 4), y)) == pytest.approx(math.log(3))
    # positives at 1, the rest (and the excluded diagonal) at 0: -(1 - log(e + 2))
    s = torch.tensor([[5.0, 1, 0, 0], [1, 5, 0, 0], [0, 0, 5, 1], [0, 0, 1, 5]])
    assert float(sup_contrastive_loss(s, y)) == pytest.approx(math.log(math.e + 2) - 1)


def test_kl_t_hand_value():
    # T = 2: softmax([2 ln 3, 0] / 2) = [3/4, 1/4] against uniform; KL = 3/4 ln 1.5 + 1/4 ln 0.5, times T^2
    s, t = torch.zeros(1, 2), torch.tensor([[2 * math.log(3), 0.0]])
    assert float(kl_t(s, t, 2.0)) == pytest.approx(4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)))


def test_mcl_losses_match_a_loop_transcription():
    g = torch.Generator().manual_seed(0)
    n_net, b, tau, temp = 3, 10, 0.1, 3.0
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 1])
    emb = [F.normalize(torch.randn(b, 16, generator=g), dim=1) for _ in range(n_net)]
    got = mcl_losses(emb, y, tau, temp)
    sim = {(i, j): emb[i] @ emb[j].t() / tau for i in range(n_net) for j in range(n_net)}
    icl = sum(loop_sup_con(sim[i, j], y) for i in range(n_net) for j in range(n_net) if i != j)
    vcl = sum(loop_sup_con(sim[i, i], y) for i in range(n_net))
    soft_icl = sum(loop_kl_t(sim[i, j], sim[j, i], temp) for i in range(n_net) for j in range(n_net) if i != j)
    soft_vcl = sum(loop_kl_t(sim[i, i], sim[j, j], temp) for i in range(n_net) for j in range(n_net) if i != j)
    want = {"icl": icl, "vcl": vcl, "soft_icl": soft_icl, "soft_vcl": soft_vcl}
    for k, v in want.items():
        assert float(got[k]) == pytest.approx(v, rel=1e-5), k


def test_soft_terms_detach_their_targets():
    """Soft VCL pulls network 0's similarities towards network 1's: only network 0 gets a gradient from
    KL_T(S_00 || sg(S_11)); with two networks every embedding gets one from the sum (each is a student once)."""
    g = torch.Generator().manual_seed(1)
    e0, e1 = (F.normalize(torch.randn(6, 8, generator=g), dim=1).requires_grad_(True) for _ in range(2))
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    kl_t(e0 @ e0.t() / 0.1, (e1 @ e1.t() / 0.1).detach(), 3.0).backward()
    assert e1.grad is None and e0.grad.abs().sum() > 0
    e0.grad = None
    mcl_losses([e0, e1], y)["soft_icl"].backward()
    assert e0.grad.abs().sum() > 0 and e1.grad.abs().sum() > 0


def test_ensemble_kd_follows_the_reference_peer_choice():
    g = torch.Generator().manual_seed(2)
    z = [torch.randn(5, 7, generator=g) for _ in range(3)]
    mean = torch.stack(z).mean(0)
    assert float(ensemble_kd_loss(z[:2])) == pytest.approx(
        float(kl_t(z[0], torch.stack(z[:2]).mean(0), 3.0) + kl_t(z[1], torch.stack(z[:2]).mean(0), 3.0))
    )
    assert float(ensemble_kd_loss(z)) == pytest.approx(float(kl_t(z[2], mean, 3.0)))  # N > 2: the last peer only
    assert float(ensemble_kd_loss(z, all_peers=True)) == pytest.approx(sum(float(kl_t(v, mean, 3.0)) for v in z))


# ------------------------------------------------------------------------------------------------ sampler
def test_m_per_class_batches_hold_whole_classes_and_are_deterministic():
    labels = np.repeat(np.arange(10), [5, 5, 5, 5, 5, 5, 5, 5, 5, 1])  # class 9 has one image: drawn with replacement
    s = MPerClassSampler(labels, m=2, batch_size=8, seed=3)
    seen = set()
    for t in range(100):
        pos, seeds = s.batch_arrays(t)
        counts = Counter(labels[pos].tolist())
        assert len(counts) == 4 and set(counts.values()) == {2}  # batch / m distinct classes, m each
        for c in counts:
            p = pos[labels[pos] == c]
            assert len(set(p.tolist())) == (1 if c == 9 else 2)  # without replacement when the class allows
        assert seeds.tolist() == [mix_seed(3, 8 * t + i) for i in range(8)]
        seen |= set(pos.tolist())
    assert seen == set(range(len(labels)))  # every image is drawn eventually
    again = MPerClassSampler(labels, m=2, batch_size=8, seed=3, start_batch=7)
    assert next(iter(again)) == s.batch(7)  # a pure function of (seed, t): resume needs no replay
    assert MPerClassSampler(labels, m=2, batch_size=8, seed=4).batch(0) != s.batch(0)


def test_m_per_class_draws_are_uniform_subsets_without_replacement():
    """A class of 4 images, m = 3: each of the 4 subsets equally likely (the vectorised draw is uniform)."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    s = MPerClassSampler(labels, m=3, batch_size=3, seed=1)
    subsets = Counter()
    for t in range(4000):
        pos = s.global_positions(t).tolist()
        assert len(set(pos)) == 3
        if labels[pos[0]] == 0:
            subsets[tuple(sorted(pos))] += 1
    assert len(subsets) == 4
    assert all(abs(v / sum(subsets.values()) - 0.25) < 0.04 for v in subsets.values())


def test_m_per_class_process_shares_are_disjoint_and_cover_the_global_batch():
    labels = np.repeat(np.arange(20), 6)
    single = MPerClassSampler(labels, m=2, batch_size=12, seed=5)
    ranks = [MPerClassSampler(labels, m=2, batch_size=6, seed=5, rank=r, world_size=2) for r in range(2)]
    for t in range(10):
        r0, r1 = (r.batch(t) for r in ranks)
        assert r0 + r1 == single.batch(t)
        p0, p1 = ({p for p, _ in r} for r in (r0, r1))
        assert not p0 & p1 and len(p0 | p1) == 12
        for share in (r0, r1):  # each process holds whole classes: m images of each class it has
            assert set(Counter(labels[[p for p, _ in share]].tolist()).values()) == {2}
    with pytest.raises(ValueError, match="multiple of m"):
        MPerClassSampler(labels, m=4, batch_size=6, seed=0)
    with pytest.raises(ValueError, match="only 20"):
        MPerClassSampler(labels, m=2, batch_size=42, seed=0)


def test_stream_labels_of_host_and_device_datasets():
    """The sampler reads each stream position's label from either pipeline's dataset (subset indices applied)."""
    from ssl_kd.data import DeviceImages, DeviceViewDataset, ImageSet, ViewDataset, stream_labels

    images = ImageSet(np.zeros((6, 4, 4, 3), np.uint8), np.array([3, 1, 4, 1, 5, 9]))
    idx = np.array([5, 0, 2])
    assert stream_labels(ViewDataset(images, {}, idx)).tolist() == [9, 3, 4]
    assert stream_labels(DeviceViewDataset(DeviceImages(images, torch.device("cpu")), {}, idx)).tolist() == [9, 3, 4]
    assert stream_labels(DeviceViewDataset(DeviceImages(images, torch.device("cpu")), {})).tolist() == [
        3,
        1,
        4,
        1,
        5,
        9,
    ]


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
            start[p] = {k: v.clone() for k, v in self.runner.models[p].state_dict().items()}
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
    stage.runner = type("R", (), {"models": nets})()
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
