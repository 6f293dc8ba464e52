"""The model contract in runs: a metadata model trains and evaluates with its inputs; evaluation scores named outputs
and stage targets."""

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
from ssl_kd.data import DatasetBundle, ImageSet
from ssl_kd.models import ClassifierModel
from ssl_kd.models import registry as model_registry
from ssl_kd.stages.supervised import Supervised


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
        net = self.raw_model(self.net)
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
