"""The device pipeline's pieces: each batched op equals the CPU op, batched views equal the host transforms on the
same draws, the tensor forms of adaptive k, the history update and the EMA, the fused optimizer kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_kd.data import (
    DataConfig,
    DeviceImages,
    DeviceViewDataset,
    ImageSet,
    build_transform,
    to_device_transform,
)
from ssl_kd.data import device_augment as D
from ssl_kd.data.augment import RANDAUGMENT_OPS
from ssl_kd.data.hashing import mix_seed, mix_seeds
from ssl_kd.losses import anl_loss, eml_loss
from ssl_kd.losses.ssl import topk_mask
from ssl_kd.memory import EMAModel, PseudoLabelHistory


def images(n: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    """Half random noise, half blocky narrow-range images (where autocontrast/equalize/solarize matter)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    for i in range(0, n, 2):
        base = rng.integers(40, 200, (4, 4, 3)).astype(np.uint8)
        out[i] = np.kron(base, np.ones((size // 4, size // 4, 1), np.uint8))
    return out


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("name", list(RANDAUGMENT_OPS))
def test_each_batched_op_equals_the_cpu_op(name):
    op, lo, hi = RANDAUGMENT_OPS[name]
    x = images()
    v = lo + (hi - lo) * np.random.default_rng(1).random(len(x))
    v[0], v[1] = lo, hi  # the ends of the range
    ref = np.stack([op(x[i], v[i]) for i in range(len(x))])
    out = D.apply_op(nchw(x), name, torch.from_numpy(v)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(out.astype(np.uint8), ref), f"{name}: {np.abs(out - ref).max()} gray levels off"


def test_cutout_and_flip_pad_crop_by_hand():
    x = torch.zeros(2, 3, 8, 8)
    fill = torch.tensor([1.0, 2.0, 3.0])
    out = D.cutout(x, torch.tensor([4.0, 0.0]), torch.tensor([4.0, 4.0]), torch.tensor([0.0, 4.0]), fill)
    # corner = max(0, centre - side/2), far corner = corner + side, both included: at the top edge the box shifts
    assert (out[0, 0] == 1).sum() == 5 * 5 and out[0, 0, :5, 2:7].eq(1).all() and out[0, 2, 0, 2] == 3
    assert out[1].abs().sum() == 0  # side 0: untouched
    from ssl_kd.data.augment import cutout as host_cutout

    ref = host_cutout(np.zeros((8, 8, 3), np.uint8), 4.0, 4.0, 0.0, (1, 2, 3))
    assert np.array_equal(out[0].permute(1, 2, 0).numpy().astype(np.uint8), ref)
    img = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    shifted = D.flip_pad_crop(img, torch.tensor([False]), torch.tensor([0]), torch.tensor([0]), 1, reflect=False)
    assert torch.equal(shifted[0, 0, 1:, 1:], img[0, 0, :3, :3]) and shifted[0, 0, 0].abs().sum() == 0
    flipped = D.flip_pad_crop(img, torch.tensor([True]), torch.tensor([1]), torch.tensor([1]), 1, reflect=True)
    assert torch.equal(flipped[0, 0], img[0, 0].flip(-1))


class Draws:
    """Stands in for the host transforms' numpy Generator: hands out given uniforms in order."""

    def __init__(self, u: np.ndarray) -> None:
        self.u, self.i = u, 0

    def random(self, n: int) -> np.ndarray:
        out = self.u[self.i : self.i + n]
        self.i += n
        return out


@pytest.mark.parametrize(
    "kind,options",
    [
        ("weak", {}),
        ("weak", {"weak": {"pad_mode": "constant"}}),
        ("strong", {}),  # TorchSSL/USB: 3 ops, cutout U[0, 0.5], after the geometry
        ("strong", {"weak": {"pad_mode": "constant"},
                    "strong": {"num_ops": 2, "op_prob": 0.5, "cutout_random_size": False,
                               "cutout_fill": [127, 127, 127]}}),  # FullMatch
        ("strong", {"strong": {"order": "before"}}),  # TorchSSL's order
    ],
)  # fmt: skip
def test_batched_views_equal_the_host_transforms_on_the_same_draws(kind, options):
    from ssl_kd.data import DatasetBundle

    x = images(16)
    bundle = DatasetBundle("t", ImageSet(x, np.zeros(16)), ImageSet(x, np.zeros(16)), 10, 32, (0.5, 0.4, 0.3),
                           (0.2, 0.25, 0.3))  # fmt: skip
    host = build_transform(kind, bundle, DataConfig(augment=options).augment)
    dev = to_device_transform(host)
    u = np.random.default_rng(3).random((16, dev.num_draws))
    out = dev(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(u))
    for i in range(16):
        if kind == "strong" and host.strong.order == "before":  # the host draws the RandAugment part first
            draws = Draws(np.concatenate([u[i, 3:], u[i, :3]]))
            img = host.geometric(host.randaugment(x[i], draws), draws)
        elif kind == "strong":
            draws = Draws(u[i])
            img = host.randaugment(host.geometric(x[i], draws), draws)
        else:
            img = host.geometric(x[i], Draws(u[i]))
        torch.testing.assert_close(out[i], host.to_tensor(img), atol=1e-6, rtol=0)


def device_dataset(n: int = 20, **fields):
    x = images(n)
    s = ImageSet(x, np.arange(n) % 3, None, fields)
    from ssl_kd.data import DatasetBundle

    bundle = DatasetBundle("t", s, s, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    views = {"w": build_transform("weak", bundle), "s": build_transform("strong", bundle)}
    dev_views = {k: to_device_transform(t) for k, t in views.items()}
    return DeviceViewDataset(DeviceImages(s, torch.device("cpu")), dev_views, np.arange(n)[::-1].copy())


def test_views_depend_only_on_image_and_seed():
    ds = device_dataset(meta=np.arange(40.0).reshape(20, 2))
    pos, seeds = np.array([0, 5, 7]), np.array([11, 12, 13], dtype=np.uint64)
    a = ds.batch(pos, seeds)
    b = ds.batch(pos[::-1].copy(), seeds[::-1].copy())  # another batch order: each sample's views are unchanged
    for k in ("w", "s", "y", "idx", "meta"):
        assert torch.equal(a[k], b[k].flip(0)), k
    assert a["idx"].tolist() == [19, 14, 12] and a["meta"][0].tolist() == [38.0, 39.0]
    c = ds.batch(pos, seeds + np.uint64(1))
    assert not torch.equal(a["s"], c["s"])
    # view k of a sample is seeded with mix_seed(seed, k), as the host ViewDataset does
    assert mix_seeds(np.array([11], dtype=np.uint64), 1)[0] == mix_seed(11, 1)


def test_adaptive_k_as_a_tensor_selects_the_same_classes():
    g = torch.Generator().manual_seed(0)
    pw, ps = torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g)
    mask = (torch.rand(64, generator=g) > 0.5).float()
    for k in (2, 3, 7):
        assert torch.equal(topk_mask(pw.softmax(1), k), topk_mask(pw.softmax(1), torch.tensor(k)))
        assert torch.equal(anl_loss(pw, ps, k), anl_loss(pw, ps, torch.tensor(k)))
        assert torch.equal(eml_loss(pw, ps, k, mask), eml_loss(pw, ps, torch.tensor(k), mask))


def test_history_update_without_boolean_indexing_matches_the_reference_rule():
    h = PseudoLabelHistory(8, 3, 0.9, True, torch.device("cpu"))
    h.update(torch.tensor([1, 4, 6]), torch.tensor([0.95, 0.5, 0.91]), torch.tensor([2, 1, 0]))
    assert h.selected_label.tolist() == [-1, 2, -1, -1, -1, -1, 0, -1]
    h.update(torch.tensor([1, 6]), torch.tensor([0.2, 0.99]), torch.tensor([0, 1]))
    assert h.selected_label.tolist() == [-1, 2, -1, -1, -1, -1, 1, -1]  # unsure predictions keep the old label


def test_ema_update_is_one_lerp_and_state_resumes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMAModel(model, 0.8, average_buffers=False)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    for s, p, e in zip(start, model.parameters(), ema.eval_module().parameters()):
        assert torch.allclose(e, 0.8 * s + 0.2 * p)
    other = EMAModel(model, 0.8, average_buffers=False)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.eval_module().parameters(), ema.eval_module().parameters()))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_kernels_make_the_same_update(name):
    from ssl_kd.optim import OptimizerConfig, build_optimizer

    results = {}
    for impl in ("loop", "foreach", "fused"):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5, 3))
        b = torch.nn.Parameter(torch.randn(5))
        opt = build_optimizer(OptimizerConfig(name=name, lr=0.1, nesterov=name == "sgd", impl=impl,
                                              no_decay_bn_bias=True), [("w", w), ("bias", b)])  # fmt: skip
        assert opt.defaults.get("fused") is (True if impl == "fused" else None)
        for _ in range(3):
            w.grad, b.grad = torch.ones_like(w), torch.full_like(b, 0.5)
            opt.step()
        results[impl] = torch.cat([w.detach().flatten(), b.detach()])
    torch.testing.assert_close(results["foreach"], results["loop"])
    torch.testing.assert_close(results["fused"], results["loop"])
