"""Evaluate models without training them: top-1/top-5 on the test split (e.g. a loaded teacher)."""

from __future__ import annotations

from pydantic import model_validator

from ssl_kd.config.schema import StageConfig
from ssl_kd.engine import Stage, register_stage


class EvaluateConfig(StageConfig):
    @model_validator(mode="after")
    def _needs_models(self) -> EvaluateConfig:
        if self.train:
            raise ValueError("an 'evaluate' stage trains nothing: list its models under `uses`, not `train`")
        if not (self.uses or self.eval.models):
            raise ValueError("an 'evaluate' stage needs models to evaluate: set `uses: [model, ...]`")
        return self


@register_stage("evaluate")
class Evaluate(Stage):
    Config = EvaluateConfig
    trains = False
