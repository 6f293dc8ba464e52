"""Per-step pieces outside the SSL step that read a value or copied a constant on every step (found by the sync trap
over the shipped configs, tests/e2e/test_sync_free.py): each now runs with no host sync and gives the values an
independent transcription gives (a loop, boolean-mask indexing as the previous code had it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sync_trap import SyncTrap
from torchvision.ops import roi_align

from ssl_kd.components.contrast import FixedNormaliser
from ssl_kd.data.hashing import hash_keys
from ssl_kd.data.mixing import mix_tensors, sample_mixup
from ssl_kd.losses.dkd import dkd_parts
from ssl_kd.models import create_model
from ssl_kd.models.heads import roi_features
from ssl_kd.prune.masker import FilterPruner


def _no_syncs(fn, *args, **kwargs):
    with SyncTrap() as trap:
        out = fn(*args, **kwargs)
    assert not trap.events, trap.summary()
    return out


def test_dkd_parts_gather_the_non_target_classes():
    """TCKD / NCKD with the target class left out by a gather: equal, with their gradient, to a loop that drops the
    target column row by row (mdistiller's decoupling, computed in log space)."""
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 5, generator=g, requires_grad=True)
    zt, y, tau = torch.randn(6, 5, generator=g), torch.tensor([0, 4, 2, 2, 1, 3]), 2.0
    tckd, nckd = _no_syncs(dkd_parts, zs, zt, y, tau)
    t_rows, n_rows = [], []
    for i, c in enumerate(y.tolist()):
        s, t = zs[i] / tau, zt[i] / tau
        keep = [j for j in range(5) if j != c]
        bs = torch.stack([s[c] - s.logsumexp(0), s[keep].logsumexp(0) - s.logsumexp(0)])
        bt = torch.stack([t[c] - t.logsumexp(0), t[keep].logsumexp(0) - t.logsumexp(0)])
        t_rows.append((bt.exp() * (bt - bs)).sum())
        ns, nt = F.log_softmax(s[keep], 0), F.log_softmax(t[keep], 0)
        n_rows.append((nt.exp() * (nt - ns)).sum())
    torch.testing.assert_close(tckd, torch.stack(t_rows).mean() * tau**2)
    torch.testing.assert_close(nckd, torch.stack(n_rows).mean() * tau**2)
    (grad,) = torch.autograd.grad(tckd + nckd, zs)
    (by_hand,) = torch.autograd.grad((torch.stack(t_rows).mean() + torch.stack(n_rows).mean()) * tau**2, zs)
    torch.testing.assert_close(grad, by_hand)


def test_pruner_masks_hard_filters_without_a_sync():
    """GHFP's per-step gradient mask and the optional re-zeroing: hard filters' rows zero, the rest untouched. The
    masks reach the device once after they change (at an epoch end), not on every step."""
    model = create_model("resnet8", 10)
    p = FilterPruner(model)
    p.refresh(0.5, 0.5, 0.5)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    F.cross_entropy(model(x).logits, y).backward()
    p.mask_grads()  # the first step after the masks changed copies them to the device
    model.zero_grad()
    F.cross_entropy(model(x).logits, y).backward()
    name = "stages.0.0.conv1"
    conv = model.get_submodule(name)
    hard = p.hard[name]
    before = conv.weight.grad.clone()
    _no_syncs(p.mask_grads)
    for i, h in enumerate(hard.tolist()):
        assert torch.equal(conv.weight.grad[i], torch.zeros_like(before[i]) if h else before[i])
    with torch.no_grad():
        conv.weight.add_(1.0)
    _no_syncs(p.zero_hard)
    assert all((conv.weight[i] == 0).all() == h for i, h in enumerate(hard.tolist()))


def test_per_step_constants_and_draws_reach_the_device_without_a_copy():
    rows = torch.arange(4)
    _no_syncs(hash_keys, 7, rows, 3)
    fmap = torch.randn(2, 4, 8, 8)
    box = (1, 2, 5, 7)
    out = _no_syncs(roi_features, fmap, box, (16, 16))
    rois = torch.tensor([[0.0, *box], [1.0, *box]])
    expected = roi_align(fmap, rois, output_size=(1, 1), spatial_scale=0.5, sampling_ratio=-1, aligned=True)
    assert torch.equal(out, expected.flatten(1))
    norm = FixedNormaliser(10)
    norm(torch.rand(4), torch.rand(4))
    _no_syncs(norm, torch.rand(4), torch.rand(4))
    torch.manual_seed(0)
    mix = sample_mixup(4, 0.4).to(torch.device("cpu"))
    x = torch.randn(4, 3, 2, 2)
    mixed = _no_syncs(mix_tensors, {"x": x}, mix)
    assert torch.equal(mixed["x"], mix.lam * x + (1.0 - mix.lam) * x[mix.perm])
