"""Filter pruning on torchvision's ImageNet ResNets (models/resnet.py): the inner convs of each block are the units,
the export builds the narrowed network (`channels`), which computes what the masked one did and is rebuilt from
its constructor spec."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_bn
from torch import nn
from torchvision.models import resnet as tv

from ssl_kd.errors import UserError
from ssl_kd.models import create_model, create_model_from_spec, model_spec
from ssl_kd.prune import FilterPruner, count_flops, count_params, export_pruned, prunable_units

BLOCKS = {"resnet18": (False, [2, 2, 2, 2]), "resnet34": (False, [3, 4, 6, 3]), "resnet50": (True, [3, 4, 6, 3])}


def _expected_units(arch: str) -> list[tuple[str, str, str]]:
    """(conv, its BN, the conv reading it) of every inner conv, written out from torchvision's block layout."""
    bottleneck, layers = BLOCKS[arch]
    out = []
    for stage, n in enumerate(layers, start=1):
        for b in range(n):
            p = f"layer{stage}.{b}."
            out.append((p + "conv1", p + "bn1", p + "conv2"))
            if bottleneck:
                out.append((p + "conv2", p + "bn2", p + "conv3"))
    return out


@pytest.mark.parametrize("arch, count", [("resnet18", 8), ("resnet34", 16), ("resnet50", 32)])
def test_units_are_the_inner_convs_of_each_block(arch, count):
    units = prunable_units(create_model(arch, 10))
    assert len(units) == count
    assert [(u.name, u.bn, u.consumer) for u in units] == _expected_units(arch)
    assert {u.role for u in units} == {"inner"} and {u.act for u in units} == {"relu"}
    names = {u.name for u in units}  # the stem, the block outputs and the downsample convs are not pruned
    assert not names & {"conv1", "layer1.0.conv3", "layer1.0.downsample.0", "layer2.0.conv2" * (arch != "resnet50")}


@torch.no_grad()
def _zero_random_filters(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Zero a random set of filters of every inner conv (not by norm: any set must export); every other unit also
    zeroes those channels' BN, the rest leave it live (non-zero constants). Returns the kept filters per conv."""
    g = torch.Generator().manual_seed(seed)
    kept = {}
    for i, (conv, bn, _) in enumerate(_expected_units(model.spec["arch"])):
        w = model.get_submodule(conv).weight
        gone = torch.rand(w.shape[0], generator=g) < 0.4
        gone[0] = False  # at least one kept
        w[gone] = 0
        if i % 2:
            model.get_submodule(bn).weight[gone] = 0
            model.get_submodule(bn).bias[gone] = 0
        kept[conv] = ~gone
    return kept


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_export_equals_the_masked_model_and_is_rebuilt_from_its_spec(arch, tmp_path):
    model = random_bn(create_model(arch, 10), seed=1)
    kept = _zero_random_filters(model, seed=2)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    model.eval()
    full = model(x).logits
    live_bn = [bn for i, (_, bn, _) in enumerate(_expected_units(arch)) if i % 2 == 0]
    # some removed channels still output a constant the export must keep
    assert sum(float(model.get_submodule(bn).bias.detach().abs().sum()) for bn in live_bn) > 0

    res = export_pruned(model, input_shape=(3, 64, 64), check_batch=2)
    small = res.model.eval()
    assert res.channels == {name: int(k.sum()) for name, k in kept.items()}
    assert (small(x).logits - full).abs().max() < 1e-4
    assert (small(x).feat - model(x).feat).abs().max() < 1e-4
    assert res.params[1] < res.params[0] and res.flops[1] < res.flops[0]
    assert res.params == (count_params(model), count_params(small))
    assert res.flops == (count_flops(model, (3, 64, 64)), count_flops(small, (3, 64, 64)))
    # the kept filters and the reading conv's kept inputs, sliced by hand
    conv, bn, reader = _expected_units(arch)[0]
    k = kept[conv]
    assert torch.equal(small.get_submodule(conv).weight, model.get_submodule(conv).weight[k])
    assert torch.equal(small.get_submodule(bn).running_var, model.get_submodule(bn).running_var[k])
    rows = kept.get(reader, slice(None))  # a Bottleneck's conv2 reads conv1 and is narrowed itself
    assert torch.equal(small.get_submodule(reader).weight, model.get_submodule(reader).weight[rows][:, k])
    assert small.get_submodule(reader).fold.abs().sum() > 0  # conv1's live BN(0) constants, folded into its reader
    # the stream keeps torchvision's widths; the block outputs and the stem are untouched
    assert small.layer1[0].conv3.out_channels == 256 if arch == "resnet50" else small.layer1[0].conv2.out_channels == 64
    assert torch.equal(small.conv1.weight, model.conv1.weight)

    # exact up to float rounding: in float64 the two agree to the float32 rounding of the stored folds (~3e-8)
    x64 = x.double()
    assert (copy.deepcopy(small).double()(x64).logits - copy.deepcopy(model).double()(x64).logits).abs().max() < 1e-6

    torch.save({"spec": model_spec(small), "sd": small.state_dict()}, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["spec"]["kwargs"]["channels"] == res.channels
    again = create_model_from_spec(saved["spec"])
    again.load_state_dict(saved["sd"])
    assert torch.equal(again.eval()(x).logits, small(x).logits)


def test_a_small_resnet50_pruned_again_composes():
    """conv2 of a Bottleneck is both a unit and the reader of conv1: after one export it carries a fold, which the
    masks zero with its filters and a second export slices and adds to."""
    model = random_bn(create_model("resnet50", 10), seed=4)
    FilterPruner(model, mask_bn=False).refresh(0.6, 0.0, 0.0)
    first = export_pruned(model, input_shape=(3, 64, 64), check_batch=2)
    assert first.channels["layer1.0.conv1"] == 64 - int(64 * 0.4)  # GHFP/SFP prune floor(n (1 - keep)) filters
    assert first.model.layer1[0].conv2.fold is not None
    FilterPruner(first.model, mask_bn=False).refresh(0.7, 0.0, 0.0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    second = export_pruned(first.model, input_shape=(3, 64, 64), check_batch=2)
    assert (second.model.eval()(x).logits - first.model.eval()(x).logits).abs().max() < 1e-4
    assert second.channels["layer1.0.conv1"] == 39 - int(39 * 0.3) and second.flops[1] < first.flops[1]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_parameter_names_stay_torchvisions(arch):
    """`pretrained:` and torchvision state_dicts load into the unpruned model; the pruned one adds only folds."""
    ref = getattr(tv, arch)(num_classes=10).state_dict()
    model = create_model(arch, 10)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.items()}
    model.load_state_dict(ref)
    small = create_model(arch, 10, channels={"layer1.0.conv1": 5})
    extra = set(small.state_dict()) - set(ref)
    assert extra == {"layer1.0.conv2.fold"} and set(ref) <= set(small.state_dict())
    assert small.layer1[0].conv1.out_channels == 5 and small.layer1[0].conv2.in_channels == 5


def test_bad_channels_option_is_a_user_error():
    with pytest.raises(UserError, match="channels.*layer1.0.conv1"):  # the error lists the prunable convs
        create_model("resnet50", 10, channels={"layer1.0.conv3": 3})
    with pytest.raises(UserError, match=r"\[1, 128\]"):
        create_model("resnet50", 10, channels={"layer2.1.conv2": 129})
