"""Linear probe: how transferable a model's features are. A fresh linear head is trained on the stage's dataset
(usually another one: `stages.<name>.data`) over the frozen pooled feature of any model (`uses`), after any stage
of any method; evaluation scores the probe on that dataset's test split (reported as `test/<model>/top1`).

    feat = backbone(x).feat              frozen, no grad; a copy, so the run's model is left untouched
    L    = CE(head(feat), y)             only the head is optimized

Defaults are CTC's `transfer.py` (DTennant/dt-tradeoff@a36516be): 30 epochs, SGD lr 0.4 momentum 0.9 wd 5e-4, batch
512, cosine per epoch, no augmentation, and the backbone kept in train mode (`bn_mode: train`) so its BatchNorm
running statistics adapt to the target data (reference quirk; `eval` freezes them). The reference reports the best
test accuracy over the probe's epochs: `best/<model>/top1` with `eval.every: 1`. Its loader keeps the last partial
batch; ours drops it.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch.nn.functional as F
from pydantic import Field, model_validator

from ssl_kd.config.schema import OptimizerConfig, SchedulerConfig, StageConfig
from ssl_kd.engine import Stage, register_stage
from ssl_kd.errors import UserError
from ssl_kd.losses import accuracy
from ssl_kd.models import LinearProbe as ProbeModule
from ssl_kd.stages._common import Augment, labelled_views


class LinearProbeConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0})
    bn_mode: Literal["train", "eval"] = "train"  # the backbone's mode while the head trains (reference: train)
    augment: Augment = "none"  # reference: resize + normalise only
    epochs: int | None = Field(30, ge=0)
    batch_size: int = Field(512, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=0.4, momentum=0.9, weight_decay=5e-4))
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig(name="cosine", interval="epoch"))

    @classmethod
    def derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A length given as `iters` replaces the default 30 epochs."""
        return {"epochs": None} if data.get("iters") is not None else {}

    @model_validator(mode="after")
    def _frozen_backbone(self) -> LinearProbeConfig:
        if self.train:
            raise ValueError("a linear probe trains only its own head: list the probed model under `uses`")
        if len(self.uses) != 1:
            raise ValueError(f"a linear probe probes one model: set `uses: [model]`, got {self.uses or '[]'}")
        return self


@register_stage("linear_probe")
class LinearProbe(Stage):
    Config = LinearProbeConfig
    cfg: LinearProbeConfig

    def setup(self) -> None:
        c = self.cfg
        self.net = self.single("uses")
        self.add_stream("train", labelled_views(self, c.augment, "all"))
        backbone = copy.deepcopy(self.raw_model(self.net))
        feat_dim = getattr(backbone, "feat_dim", None)
        if not isinstance(feat_dim, int):
            raise UserError(f"stages.{self.name}.uses: model '{self.net}' declares no `feat_dim` to probe.")
        # a new module (optimized, DDP-wrapped so rank 0's BN statistics are broadcast, checkpointed, saved)
        self.register_module("probe", ProbeModule(backbone, self.data.num_classes, feat_dim, c.bn_mode))

    def train_step(self, batch):
        part = batch["train"]
        logits = self.module("probe")(part["x"], **self.inputs(self.net, part))
        return {"ce": F.cross_entropy(logits, part["y"])}, {"acc": accuracy(logits, part["y"])}

    def predict(self, name, model, batch):
        """Evaluation scores the probe (in eval mode), not the probed model's own head."""
        probe = self.modules["probe"]
        was = probe.training
        probe.eval()
        try:
            return probe.predict(batch)
        finally:
            probe.train(was)
