"""DOT against a two-step example worked by hand, against SGD where they must agree (delta = 0), its exact state
round trip, and the loss groups it is given. DOT in runs: tests/stages/test_dot_runs.py."""

from __future__ import annotations

import pytest
import torch

from ssl_kd.config import OptimizerConfig
from ssl_kd.optim import DOT, GroupGrads, build_optimizer, loss_groups


def _params():
    # a gets task and distillation gradients, b only task, c only distillation
    return [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in (1.0, 2.0, -1.0)]


def _dot_step(opt, params, task, kd):
    """mdistiller's calling sequence, with the gradients set directly instead of backpropagated."""
    opt.zero_grad(set_to_none=True)
    for p, g in zip(params, kd):
        p.grad = None if g is None else torch.tensor([g], dtype=torch.float64)
    opt.step_kd()
    opt.zero_grad(set_to_none=True)
    for p, g in zip(params, task):
        p.grad = None if g is None else torch.tensor([g], dtype=torch.float64)
    opt.step()


def test_dot_two_steps_by_hand():
    # lr 0.1, momentum 0.9, delta 0.1 -> task momentum 0.8, distillation momentum 1.0; weight decay 0.1
    a, b, c = params = _params()
    opt = DOT(params, lr=0.1, momentum=0.9, delta=0.1, weight_decay=0.1)
    _dot_step(opt, params, task=[0.5, 1.0, None], kd=[0.2, None, 0.4])
    # step 1 (buffers start as the first gradient):
    #   a: v = 0.5 + 0.1*1 = 0.6 -> 1 - 0.06 = 0.94;  v_kd = 0.2 (no decay: counted once) -> 0.94 - 0.02 = 0.92
    #   b: v = 1.0 + 0.1*2 = 1.2 -> 2 - 0.12 = 1.88
    #   c: v_kd = 0.4 (the reference adds no decay on a first distillation-only step) -> -1 - 0.04 = -1.04
    assert [round(p.item(), 12) for p in params] == [0.92, 1.88, -1.04]
    _dot_step(opt, params, task=[0.1, -0.5, None], kd=[0.3, None, -0.2])
    # step 2:
    #   a (both): v = 0.8*0.6 + (0.1 + 0.1*0.92) = 0.672 -> 0.92 - 0.0672 = 0.8528
    #             v_kd = 1.0*0.2 + 0.3 = 0.5 -> 0.8528 - 0.05 = 0.8028
    #   b (task only, momentum 0.9): v = 0.9*1.2 + (-0.5 + 0.188) = 0.768 -> 1.88 - 0.0768 = 1.8032
    #   c (kd only, momentum 0.9, decay here): v_kd = 0.9*0.4 + (-0.2 - 0.104) = 0.056 -> -1.04 - 0.0056 = -1.0456
    assert [round(p.item(), 12) for p in params] == [0.8028, 1.8032, -1.0456]
    st = opt.state
    assert round(st[a]["momentum_buffer"].item(), 12) == 0.672 and round(st[a]["momentum_kd_buffer"].item(), 12) == 0.5
    assert "momentum_kd_buffer" not in st[b] and "momentum_buffer" not in st[c]


def test_dot_with_zero_delta_is_sgd_on_the_summed_gradient():
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    dot = DOT([w1], lr=0.05, momentum=0.9, delta=0.0, weight_decay=5e-4)
    sgd = torch.optim.SGD([w2], lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(4):
        task, kd = torch.randn(5, dtype=torch.float64, generator=g), torch.randn(5, dtype=torch.float64, generator=g)
        w1.grad = kd
        dot.step_kd()
        w1.grad = task
        dot.step()
        w2.grad = task + kd
        sgd.step()
    torch.testing.assert_close(w1, w2)


def test_dot_state_dict_resumes_exactly():
    g = torch.Generator().manual_seed(1)
    grads = [(torch.randn(3, generator=g), torch.randn(3, generator=g)) for _ in range(4)]

    def run(steps, opt, w):
        for task, kd in steps:
            w.grad = kd
            opt.step_kd()
            w.grad = task
            opt.step()

    w = torch.zeros(3, requires_grad=True)
    opt = DOT([w], lr=0.1, delta=0.075, weight_decay=5e-4)
    run(grads, opt, w)
    w2 = torch.zeros(3, requires_grad=True)
    opt2 = DOT([w2], lr=0.1, delta=0.075, weight_decay=5e-4)
    run(grads[:2], opt2, w2)
    w3 = w2.detach().clone().requires_grad_(True)
    opt3 = DOT([w3], lr=0.1, delta=0.075, weight_decay=5e-4)
    opt3.load_state_dict(opt2.state_dict())
    run(grads[2:], opt3, w3)
    assert torch.equal(w, w3)


def test_factory_builds_dot_with_per_group_weight_decay():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(OptimizerConfig(name="dot", lr=0.05, delta=0.09, no_decay_bn_bias=True),
                          list(m.named_parameters()))  # fmt: skip
    assert isinstance(opt, DOT) and [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert all(g["delta"] == 0.09 and g["momentum"] == 0.9 for g in opt.param_groups)


def test_loss_group_assignment():
    dot = OptimizerConfig(name="dot")
    assert loss_groups(dot, {"ce": 0.1, "kd": 0.9}) == [("distill", {"kd": 0.9}), ("task", {"ce": 0.1})]
    assert loss_groups(OptimizerConfig(), {"ce": 0.1, "kd": 0.9}) is None
    custom = OptimizerConfig(name="dot", loss_groups={"task": ["ce", "aux"]})
    assert loss_groups(custom, {"ce": 1.0, "aux": 0.5, "kd": 1.0, "off": 0.0}) == [
        ("distill", {"kd": 1.0}), ("task", {"ce": 1.0, "aux": 0.5})]  # fmt: skip
    with pytest.raises(ValueError, match="'distill' group"):
        loss_groups(dot, {"ce": 1.0})
    with pytest.raises(ValueError, match="'ec' is not a loss term"):
        loss_groups(OptimizerConfig(name="dot", loss_groups={"task": ["ec"]}), {"ce": 1.0, "kd": 1.0})
    with pytest.raises(ValueError, match="no group"):
        loss_groups(OptimizerConfig(name="dot", loss_groups={"student": ["ce"]}), {"ce": 1.0, "kd": 1.0})
    with pytest.raises(ValueError, match="one summed loss"):
        loss_groups(OptimizerConfig(loss_groups={"task": ["ce"]}), {"ce": 1.0})


def test_group_grads_accumulate_clip_and_hand_over():
    w, v = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    grads = GroupGrads([w, v], ["distill", "task"])
    for kd, task in (([3.0, 0.0], [0.0]), ([1.0, 0.0], [3.0])):  # two accumulation steps
        w.grad = torch.tensor(kd)
        grads.take("distill")
        assert w.grad is None
        v.grad = torch.tensor(task)
        grads.take("task")
    assert grads.sums["distill"][0].tolist() == [4.0, 0.0] and grads.sums["distill"][1] is None
    assert grads.sums["task"][1].tolist() == [3.0] and grads.sums["task"][0] is None
    norm = grads.clip_(2.5)  # the summed gradient [4, 0, 3] has norm 5: every group is halved
    assert norm.item() == pytest.approx(5.0)
    assert grads.sums["distill"][0].tolist() == pytest.approx([2.0, 0.0])
    assert grads.sums["task"][1].tolist() == pytest.approx([1.5])
    seen = {}

    class Recorder:
        def step_group(self, group):
            seen[group] = (w.grad.tolist(), v.grad)

    grads.hand_over(Recorder())
    assert list(seen) == ["distill"] and seen["distill"][0] == pytest.approx([2.0, 0.0]) and seen["distill"][1] is None
    assert w.grad is None and v.grad.tolist() == pytest.approx([1.5])  # the last group stays for step()
