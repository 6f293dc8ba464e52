"""The wider model contract: feature maps by index, auxiliary outputs, extra inputs by name (metadata), constructor
specs, and evaluation through `predict` (named outputs, stage-declared targets such as an ensemble)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIGS, run_cli
from torch import nn

import ssl_kd.engine.services as services_mod
from ssl_kd.config import registry
from ssl_kd.data import DatasetBundle, ImageSet, ViewDataset
from ssl_kd.models import ClassifierModel, create_model, create_model_from_spec, model_spec
from ssl_kd.models import registry as model_registry
from ssl_kd.stages.supervised import Supervised


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


class MetaMLP(ClassifierModel):
    """Image MLP whose classifier also reads a per-sample metadata vector (as DynamicMLP's fusion head does)."""

    extra_inputs = ("meta",)

    def __init__(self, num_classes: int, meta_dim: int = 10, hidden: int = 16) -> None:
        super().__init__()
        self.num_classes, self.feat_dim, self.feat_channels = num_classes, 2 * hidden, (hidden,)
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, hidden), nn.ReLU())
        self.meta_net = nn.Sequential(nn.Linear(meta_dim, hidden), nn.ReLU())
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward_features(self, x):
        f = self.body(x)
        return [f], f

    def fuse(self, feat, meta):
        return torch.cat([feat, self.meta_net(meta.float())], dim=1)


def with_meta(bundle: DatasetBundle, informative: bool) -> DatasetBundle:
    """The label, one-hot, as each image's metadata (or zeros): a model that reads it can be perfect."""

    def add(s: ImageSet) -> ImageSet:
        meta = 3.0 * np.eye(bundle.num_classes, dtype=np.float32)[s.targets] * informative
        return ImageSet(np.stack([s.image(i) for i in range(len(s))]), s.targets, s.classes, {"meta": meta})

    bundle.train, bundle.test = add(bundle.train), add(bundle.test)
    return bundle


def test_image_set_fields_reach_the_batch():
    s = ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), None, {"meta": np.arange(8.0).reshape(4, 2)})
    ds = ViewDataset(s.subset(np.array([3, 1])), {"x": lambda img, seed: torch.zeros(3, 8, 8)})
    item = ds[(0, 0)]
    assert torch.equal(item["meta"], torch.tensor([6.0, 7.0])) and item["y"] == 3
    with pytest.raises(ValueError, match="clash"):
        ViewDataset(s, {"meta": lambda img, seed: img})
    with pytest.raises(ValueError, match="fields"):
        ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), None, {"meta": np.zeros(3)})


def test_a_metadata_model_trains_and_evaluates_with_its_inputs(tmp_path, monkeypatch):
    monkeypatch.setitem(model_registry._REGISTRY, "meta_mlp", lambda num_classes, **kw: MetaMLP(num_classes, **kw))
    real = services_mod.load_dataset
    top1 = {}
    for informative in (True, False):
        monkeypatch.setattr(services_mod, "load_dataset", lambda cfg, i=informative: with_meta(real(cfg), i))
        out = tmp_path / f"meta_{informative}"
        args = [CONFIGS / "quickstart.yaml", "models.teacher={arch: meta_mlp}", "stages.teacher.epochs=2",
                "stages.distill.enabled=false", "stages.teacher.augment=none", "experiment.logger.progress=false",
                f"experiment.output_dir={out}"]  # fmt: skip
        assert run_cli(*args) == 0
        top1[informative] = torch.load(out / "checkpoints/last.pt", weights_only=True)["results"]["teacher"]["last"]
    # the metadata (= the label) reached the model in training and in evaluation
    assert top1[True]["teacher/top1"] > 0.97 and top1[True]["teacher/top1"] > top1[False]["teacher/top1"] + 0.2
    # the same model without its metadata is refused with a message naming the missing field
    m = MetaMLP(10)
    with pytest.raises(KeyError, match="meta"):
        m.predict({"x": torch.zeros(2, 3, 8, 8)})


class MultiOutput(Supervised):
    """Supervised training; evaluation scores three named outputs of the model and a stage-level ensemble."""

    type_name = "multi_output"

    def predict(self, name, model, batch):
        z = model(batch["x"]).logits
        return {"main": z, "scaled": 3.0 * z, "reversed": -z}

    def eval_targets(self):
        net = self.runner.models[self.net]
        return {"ensemble": lambda batch: (F.softmax(net(batch["x"]).logits, 1) + 1e-3).log()}


def test_evaluation_scores_named_outputs_and_stage_targets(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._STAGES, "multi_output", MultiOutput)
    out = tmp_path / "multi"
    args = [
        CONFIGS / "quickstart.yaml",
        "stages.teacher.type=multi_output",
        "stages.teacher.epochs=2",
        "stages.distill.enabled=false",
        "experiment.logger.progress=false",
        f"experiment.output_dir={out}",
    ]
    assert run_cli(*args) == 0
    ev = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in ev if r["kind"] == "eval"][-1]
    top1 = ev["test/teacher/top1"]  # the headline is the first output
    assert ev["test/teacher/scaled/top1"] == top1 and ev["test/teacher/scaled/loss"] != ev["test/teacher/loss"]
    assert ev["test/teacher/reversed/top1"] < 0.2 < top1
    assert ev["test/ensemble/top1"] == top1
    assert ev["best/teacher/top1"] == top1


def test_every_shipped_model_predicts_its_logits():
    for name in ("resnet8", "wrn_16_1", "mobilenetv2", "vgg8", "shufflenetv2"):
        m = create_model(name, 4).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(m.predict({"x": x, "y": torch.zeros(2)}), m(x).logits)
