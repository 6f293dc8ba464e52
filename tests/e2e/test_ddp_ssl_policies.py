"""2 processes = 1 process for the SSL policies' statistics: each of two gloo ranks gives its half of the batch to
FreeMatch / SoftMatch / AdaMatch / FlexMatch's history / FullMatch's adaptive k / the alignments / Dash's warm-up
estimate, and ends with the state, the weights and (FreeMatch's fairness term) the loss and gradient that one
process computes on the whole batch."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp
from helpers import ssl_digits_config, torchrun_cli

from ssl_kd.components.adaptive_k import global_adaptive_k
from ssl_kd.components.dist_align import DIST_ALIGN
from ssl_kd.components.threshold import THRESHOLD, WeakView
from ssl_kd.engine import read_metrics

CPU = torch.device("cpu")
B, C, STEPS = 8, 5, 6


def batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        logits = torch.randn(B, C, generator=g) * 3
        out.append((logits, torch.softmax(torch.randn(B, C, generator=g) * 2, -1), torch.randn(B, C, generator=g)))
    return out


def run_policies(rows: slice) -> dict[str, torch.Tensor]:
    """Every policy over STEPS steps on the rows `rows` of each batch; what it ends with and what it gave."""
    blocks = [{"type": "freematch", "momentum": 0.7}, {"type": "softmatch", "momentum": 0.7}, {"type": "adamatch"},
              {"type": "dash", "warmup_iters": STEPS, "estimate_steps": 3}]  # fmt: skip
    th = {b["type"]: THRESHOLD.build(THRESHOLD.validate(b), device=CPU, num_classes=C) for b in blocks}
    # FlexMatch's history of every sample, gathered from the ranks (tau low enough that samples are recorded)
    th["flex"] = THRESHOLD.build(THRESHOLD.validate({"type": "flex", "tau": 0.5}), device=CPU, num_classes=C,
                                 num_samples=B * STEPS)  # fmt: skip
    al = {n: DIST_ALIGN.build(DIST_ALIGN.validate({"type": n, "momentum": 0.7}), num_classes=C, device=CPU)
          for n in ("uniform", "labelled")}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for t, (logits, probs_lb, logits_s) in enumerate(batches()):
        z, lb = logits[rows], probs_lb[rows]
        p = torch.softmax(z, -1)
        for name, a in al.items():
            out[f"{name}/aligned{t}"] = a(p, lb)
        # Dash's warm-up: each rank's labelled loss differs; the estimate takes their mean (= the global batch's)
        view = WeakView(p, z, t * B + torch.arange(B)[rows], lb, t, sup_loss=(z**2).mean())
        for name, pol in th.items():
            out[f"{name}/w{t}"] = pol.weights(view)
        zs = logits_s[rows].clone().requires_grad_(True)
        fair = th["freematch"].extra_losses(zs, out[f"freematch/w{t}"])["fairness"]
        (grad,) = torch.autograd.grad(fair, zs)
        out[f"fair{t}"], out[f"fair_grad{t}"] = fair.detach(), grad
        out[f"k{t}"] = global_adaptive_k(z, logits_s[rows])  # FullMatch's adaptive k: the max over every rank
    for name, pol in [*th.items(), *al.items()]:
        for k, v in (pol.state_dict() if hasattr(pol, "state_dict") else {}).items():
            out[f"{name}/{k}"] = v
    return out


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    td.init_process_group("gloo", rank=rank, world_size=2)
    try:
        half = B // 2
        torch.save(run_policies(slice(rank * half, (rank + 1) * half)), f"{out}/{rank}.pt")
    finally:
        td.destroy_process_group()


def test_two_ranks_hold_the_global_batch_statistics(tmp_path):
    one = run_policies(slice(0, B))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    got = {r: torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)}
    for key, want in one.items():
        if "/w" in key or "aligned" in key:  # per-sample: the ranks' halves side by side
            both = torch.cat([got[0][key], got[1][key]])
        elif key.startswith("fair_grad"):  # each rank's rows, n times (DDP divides the sum over ranks by n)
            both = torch.cat([got[0][key], got[1][key]]) / 2
        else:  # global statistics: the same on both ranks
            assert torch.allclose(got[0][key], got[1][key], atol=1e-6), key
            both = got[0][key]
        assert torch.allclose(both.float(), want.float(), atol=1e-6, equal_nan=True), key
    assert not torch.isnan(one["dash/rho_init"])
    assert (one["flex/selected_label"] >= 0).sum() > B  # the history holds many steps of both ranks


@pytest.mark.slow  # torchrun; the statistics over the global batch are checked on 2 gloo ranks above
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.parametrize(("type_", "port"), [("freematch", 29531), ("adamatch", 29532)])
def test_presets_run_under_ddp(tmp_path, type_, port):
    """The stage with a gathering policy, alignment, the fairness term's global sums and EML/ANL under torchrun."""
    weights = {"eml": 1.0, "anl": 1.0}
    cfg = ssl_digits_config(tmp_path / "ssl.yaml", type_, iters=6, eval_every=6, log_every=3, loss_weights=weights)
    res = torchrun_cli(str(cfg), f"experiment.output_dir={tmp_path / 'ddp'}", port=port)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints/last.pt", weights_only=True)
    assert ckpt["global_step"] == 6
    train = [r for r in read_metrics(tmp_path / "ddp") if r["kind"] == "train"]
    assert len(train) == 2 and {"train/eml", "train/anl", "train/threshold"} <= set(train[-1])  # rank 0 writes
