"""The wider model contract: feature maps by index, auxiliary outputs, extra inputs by name (metadata), constructor
specs, every shipped model's `predict`. In runs (named outputs, stage-declared targets such as an ensemble):
tests/stages/test_model_contract_runs.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_kd.data import ImageSet, ViewDataset
from ssl_kd.models import create_model, create_model_from_spec, model_spec


def test_feature_maps_by_index_and_aux_default():
    m = create_model("cnn_small", 5, width=8).eval()
    x = torch.randn(2, 3, 16, 16)
    every = m(x, return_feats=True).feats
    picked = m(x, return_feats=[-1, 0]).feats
    assert len(picked) == 2 and torch.equal(picked[0], every[-1]) and torch.equal(picked[1], every[0])
    assert dict(m(x).aux) == {}
    with pytest.raises(IndexError, match="out of range"):
        m(x, return_feats=[3])
    with pytest.raises(TypeError, match="not declared"):
        m(x, meta=torch.zeros(2, 4))
    assert torch.equal(m.predict({"x": x}), m(x).logits)


def test_constructor_spec_rebuilds_the_same_model():
    m = create_model("mlp", 7, hidden=12, depth=2)
    spec = model_spec(m)
    assert spec == {"arch": "mlp", "num_classes": 7, "kwargs": {"hidden": 12, "depth": 2}}
    again = create_model_from_spec(spec)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_image_set_fields_reach_the_batch():
    s = ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), None, {"meta": np.arange(8.0).reshape(4, 2)})
    ds = ViewDataset(s.subset(np.array([3, 1])), {"x": lambda img, seed: torch.zeros(3, 8, 8)})
    item = ds[(0, 0)]
    assert torch.equal(item["meta"], torch.tensor([6.0, 7.0])) and item["y"] == 3
    with pytest.raises(ValueError, match="clash"):
        ViewDataset(s, {"meta": lambda img, seed: img})
    with pytest.raises(ValueError, match="fields"):
        ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), None, {"meta": np.zeros(3)})


def test_every_shipped_model_predicts_its_logits():
    for name in ("resnet8", "wrn_16_1", "mobilenetv2", "vgg8", "shufflenetv2"):
        m = create_model(name, 4).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(m.predict({"x": x, "y": torch.zeros(2)}), m(x).logits)
