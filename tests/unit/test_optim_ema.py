"""LR schedules against hand-computed values; EMA against the reference update rule."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_kd.callbacks import EMAModel
from ssl_kd.config import SchedulerConfig
from ssl_kd.optim import build_optimizer, lr_factor


def test_cosine_cycles_is_torchssl_schedule():
    f = lr_factor(SchedulerConfig(name="cosine_cycles", cycles=7 / 16), total=1024, base_lr=0.03)
    assert f(0) == 1.0
    assert math.isclose(f(512), math.cos(7 * math.pi * 512 / (16 * 1024)))
    assert math.isclose(0.03 * f(1024), 0.03 * math.cos(7 * math.pi / 16))  # ~0.00585 at the end


def test_cosine_annealing_and_min_lr():
    f = lr_factor(SchedulerConfig(name="cosine", min_lr=0.01), total=100, base_lr=0.1)
    assert f(0) == 1.0 and math.isclose(f(100), 0.1) and math.isclose(f(50), 0.1 + 0.9 * 0.5)


def test_multistep_matches_mdistiller_epochs():
    f = lr_factor(SchedulerConfig(name="multistep", milestones=[150, 180, 210]), total=240, base_lr=0.05)
    # mdistiller: epoch e (1-based) decays once e > milestone; our k = e - 1 scheduler steps
    assert [round(f(e - 1), 6) for e in (1, 150, 151, 181, 211, 240)] == [1, 1, 0.1, 0.01, 0.001, 0.001]


def test_linear_warmup():
    f = lr_factor(SchedulerConfig(name="cosine", warmup=4), total=104, base_lr=0.1)
    assert [f(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0


def test_no_decay_on_bn_and_bias():
    from ssl_kd.config import OptimizerConfig
    from ssl_kd.models import create_model

    m = create_model("wrn_28_2", 10)
    opt = build_optimizer(OptimizerConfig(weight_decay=5e-4, no_decay_bn_bias=True, nesterov=True, lr=0.03),
                          list(m.named_parameters()))  # fmt: skip
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 1_469_642
    assert opt.defaults["nesterov"] is True


def test_ema_follows_reference_rule_from_the_initial_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMAModel(model, decay=0.9, average_buffers=False)
    shadow = {k: v.clone() for k, v in model.named_parameters()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))  # BN running stats move
        ema.update()
        for k, p in model.named_parameters():
            shadow[k] = 0.9 * shadow[k] + 0.1 * p.detach()
    ev = ema.eval_module()
    for k, p in ev.named_parameters():
        assert torch.allclose(p, shadow[k], atol=1e-6), k
    # parameters only: the BN buffers used for evaluation are the live model's
    assert torch.equal(ev[1].running_mean, model[1].running_mean)


def test_ema_can_average_buffers():
    model = torch.nn.BatchNorm1d(2)
    ema = EMAModel(model, decay=0.5, average_buffers=True)
    start = model.running_mean.clone()
    model.train()
    model(torch.randn(8, 2) + 5)
    ema.update()
    assert torch.allclose(ema.eval_module().running_mean, 0.5 * start + 0.5 * model.running_mean)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_build(name):
    from ssl_kd.config import OptimizerConfig

    p = torch.nn.Parameter(torch.ones(2))
    assert build_optimizer(OptimizerConfig(name=name, lr=0.1), [("w", p)]).param_groups[0]["lr"] == 0.1


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops (each one or more kernel launches on a GPU) run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _update_ops(depth: int) -> list[str]:
    from ssl_kd.optim.config import OptimizerConfig

    net = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(depth)])
    named = list(net.named_parameters())
    opt = build_optimizer(OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, impl="fused"), named)
    ema = EMAModel(net, 0.999, average_buffers=False)
    for _ in range(2):  # the second step has momentum buffers: the steady state
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        with _CountOps() as count:
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update()
    return count.ops


def test_the_optimizer_step_and_ema_update_are_a_few_kernels_whatever_the_model_size():
    """The FixMatch family's per-step update (fused SGD, `optimizer.impl: auto` on CUDA, then the EMA's one
    `_foreach_lerp_`) launches the same few ops for 4 or 40 parameter tensors: nothing per parameter, so little
    is left for a CUDA graph to save."""
    small, large = _update_ops(2), _update_ops(20)
    assert small == large
    assert len(small) <= 6, small
    assert any("_fused_sgd" in op for op in small) and any("_foreach_lerp" in op for op in small)
