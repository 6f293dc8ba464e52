"""The Stage base class: a method is `setup()` plus `train_step(batch) -> named terms`.

A stage never moves tensors between devices, never opens autocast, never logs or checkpoints: the runner
does all of that. What a stage needs to survive a restart it registers (`register_state`, `register_module`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from ssl_kd.config.schema import StageConfig
from ssl_kd.errors import UserError

if TYPE_CHECKING:
    from ssl_kd.data import DatasetBundle, Transform
    from ssl_kd.engine.runner import Runner


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class Stream:
    """A named source of training batches: an indexable dataset and its global batch size."""

    dataset: torch.utils.data.Dataset
    batch_size: int


@dataclass
class Progress:
    step: int = 0  # optimizer steps completed in this stage
    total_steps: int = 0
    steps_per_epoch: int = 1

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def fraction(self) -> float:
        return self.step / max(1, self.total_steps)


class Stage:
    type_name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig
    trains: ClassVar[bool] = True  # False for stages that only evaluate

    def __init__(self, name: str, cfg: StageConfig, runner: Runner) -> None:
        self.name = name
        self.cfg = cfg
        self.runner = runner
        self.progress = Progress()
        self.streams: dict[str, Stream] = {}
        self.modules: dict[str, nn.Module] = {}
        self.states: dict[str, Stateful] = {}
        self._forward_models: dict[str, nn.Module] = {}

    # ---------------------------------------------------------------- what a method writes
    def setup(self) -> None:
        """Declare streams, extra modules and state. Called once per stage (also on resume)."""

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_extras(self) -> dict[str, Any]:
        """Values to add to each evaluation record (e.g. per-class thresholds); JSON-serialisable."""
        return {}

    # ---------------------------------------------------------------- what the runner offers a method
    @property
    def data(self) -> DatasetBundle:
        return self.runner.data

    def model(self, name: str) -> nn.Module:
        """The model to call in train_step (DDP-wrapped when trained on several processes)."""
        return self._forward_models[name]

    def single(self, key: str) -> str:
        names = getattr(self.cfg, key)
        if len(names) != 1:
            raise UserError(
                f"stages.{self.name}.{key}: a '{self.type_name}' stage needs exactly one model here, "
                f"got {names or '[]'}."
            )
        return names[0]

    def transform(self, kind: str) -> Transform:
        return self.runner.transform(kind)

    def ssl_split(self) -> tuple[np.ndarray, np.ndarray]:
        return self.runner.ssl_split()

    def add_stream(self, name: str, dataset: torch.utils.data.Dataset, batch_size: int | None = None) -> None:
        self.streams[name] = Stream(dataset, batch_size or self.cfg.batch_size)

    def register_state(self, name: str, obj: Stateful) -> None:
        """Anything with state_dict/load_state_dict: checkpointed with the stage, restored on resume."""
        self.states[name] = obj

    def register_module(self, name: str, module: nn.Module) -> nn.Module:
        """An extra trainable module (e.g. a learnable temperature): optimized and checkpointed."""
        self.modules[name] = module.to(self.runner.device)
        return self.modules[name]

    def parameters_to_train(self) -> list[tuple[str, nn.Parameter]]:
        named = []
        for mname in self.cfg.train:
            named += [(f"{mname}.{n}", p) for n, p in self.runner.models[mname].named_parameters()]
        for mname, mod in self.modules.items():
            named += [(f"{mname}.{n}", p) for n, p in mod.named_parameters()]
        return named
