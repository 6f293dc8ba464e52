"""The Stage base class: a method is `setup()` plus `train_step(batch) -> (losses, diagnostics)`, and the lifecycle
hooks it needs.

A stage never moves tensors between devices, never opens autocast, never calls a collective, never logs or
checkpoints: the runner does all of that. What a stage needs to survive a restart it registers
(`register_state`, `register_module`); what it composes (a frozen teacher, scheduled scalars, the EMA model, a
threshold or temperature policy) it asks for here or builds from `ssl_kd.components`.

Lifecycle (Catalyst-style; the runner calls these, a method never subclasses the runner):

    setup()                          every time the stage is entered, fresh or resumed: streams, modules, state
    on_stage_start()                 once, before the first step (not again on resume)
      on_epoch_start()               at steps 0, spe, 2 spe, ...
        train_step(batch)            per micro-batch: the loss terms (and diagnostics)
        after_backward()             the step's gradient is in .grad (synchronised), before clipping and the step
        on_step_end()                after the optimizer step, before the callbacks see the step
      on_epoch_end()                 after the epoch's last step, before the callbacks' epoch end (eval, checkpoint)
    on_stage_end()                   once, after the last step, before the stage's final checkpoint
    callbacks()                      stage-specific callbacks, run with the runner's in CallbackOrder

Each hook runs exactly once at its point of an uninterrupted run: a resumed run does not repeat the hooks that
ran before its checkpoint (their effects are in the registered state), so hooks and resume compose.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from ssl_kd.components import Schedule, ScheduleConfig, Scheduled, Teacher
from ssl_kd.config.schema import StageConfig
from ssl_kd.errors import UserError

if TYPE_CHECKING:
    from ssl_kd.data import DatasetBundle, Transform
    from ssl_kd.engine.callback import Callback
    from ssl_kd.engine.services import DataServices
    from ssl_kd.memory import EMAModel
    from ssl_kd.models import Prediction

Terms = dict[str, torch.Tensor]
StepOutput = Terms | tuple[Terms, Terms]  # losses, or (losses, diagnostics)


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


@dataclass(frozen=True)
class Plot:
    """A diagnostic the run report draws for this stage type.

    `lines`: one panel with a curve per `train/<key>` (keys -> legend names); `bars`: the last value of an
    evaluation record's list entry (e.g. per-class thresholds), one bar per element. The file is `<name>.png`.
    """

    name: str
    keys: Mapping[str, str]
    title: str
    ylabel: str
    kind: str = "lines"  # lines | bars


@dataclass
class Prepared:
    """What the engine prepares for a stage's forward passes (DDP-wrapped when trained on several processes)."""

    models: dict[str, nn.Module] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    frozen: list[Any] = field(default_factory=list)  # the `freeze:` parts held frozen (engine/freeze.py)


class StageContext(Protocol):
    """All a stage sees of the run. The Runner lends one per stage; anything else that provides these members (a
    test double, a notebook harness) can drive a stage too. A stage never reaches past it: no Runner, no globals.

    `prepared` is filled by the engine before the first step (the forward callables of the stage's models and
    modules); `raw_model` is the run's model itself, unwrapped, for its attributes and parameters."""

    device: torch.device
    is_main: bool
    prepared: Prepared

    def raw_model(self, name: str) -> nn.Module: ...
    def data_services(self) -> DataServices: ...
    def stage_seed(self, *parts: int) -> int: ...
    def one_pass(
        self, dataset: torch.utils.data.Dataset, batch_size: int, seed: int
    ) -> Iterator[dict[str, torch.Tensor]]: ...
    def replace_model(self, name: str, model: nn.Module) -> None: ...
    def log(self, record: dict[str, Any]) -> None: ...
    def save_stage_weights(self, which: str, weights: dict[str, Any]) -> None: ...


class Stage:
    type_name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig
    trains: ClassVar[bool] = True  # False for stages that only evaluate
    plots: ClassVar[tuple[Plot, ...]] = ()  # diagnostics the report draws (any other train/* number: the grid)
    # the train/* terms the progress bar shows after the total loss; None: the weighted terms, then the first
    # diagnostic of the first declared line plot (e.g. the SSL stages' mask rate)
    progress_keys: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, name: str, cfg: StageConfig, ctx: StageContext) -> None:
        self.name = name
        self.cfg = cfg
        self._ctx = ctx
        self.progress = Progress()
        self.streams: dict[str, Stream] = {}
        self.modules: dict[str, nn.Module] = {}
        self.states: dict[str, Stateful] = {}
        self.ema_models: dict[str, EMAModel] = {}  # filled by the engine when the stage's `ema` is enabled

    # ================================================================ what a method writes
    def setup(self) -> None:
        """Declare streams, extra modules and state. Called every time the stage is entered (also on resume)."""

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        """The step's loss terms (named as in `loss_weights`), optionally with diagnostics: `return losses, diag`.
        Diagnostics are logged like losses but never enter the optimized sum."""
        raise NotImplementedError

    # lifecycle hooks (see the module docstring for when each runs); no-ops by default
    def on_stage_start(self) -> None: ...
    def on_epoch_start(self) -> None: ...
    def after_backward(self) -> None: ...
    def on_step_end(self) -> None: ...
    def on_epoch_end(self) -> None: ...
    def on_stage_end(self) -> None: ...

    def callbacks(self) -> list[Callback]:
        """Stage-specific callbacks, added to the runner's for this stage."""
        return []

    def eval_extras(self) -> dict[str, Any]:
        """Values to add to each evaluation record (e.g. per-class thresholds); JSON-serialisable."""
        return {}

    def predict(self, name: str, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Prediction:
        """What evaluation scores for model `name` (the live or EMA module): the model's own `predict`."""
        predict = getattr(model, "predict", None)
        return predict(batch) if predict is not None else model(batch["x"]).logits

    def eval_targets(self) -> dict[str, Callable[[Mapping[str, torch.Tensor]], Prediction]]:
        """Extra things to evaluate besides the models, by name (e.g. an ensemble of the stage's models)."""
        return {}

    # ================================================================ what the engine offers a method
    @property
    def data(self) -> DatasetBundle:
        """The stage's dataset: its own `data:` block when it has one, else the run's."""
        return self._ctx.data_services().data

    @property
    def device(self) -> torch.device:
        """Where the batches and models are (for tensors a stage creates itself, e.g. a memory bank)."""
        return self._ctx.device

    @property
    def is_main(self) -> bool:
        """True on the process that prints and writes files (rank 0)."""
        return self._ctx.is_main

    def model(self, name: str) -> nn.Module:
        """The model to call in train_step (DDP-wrapped when trained on several processes)."""
        return self._ctx.prepared.models[name]

    def raw_model(self, name: str) -> nn.Module:
        """Model `name` itself, unwrapped: for its attributes (`num_classes`, `feat_dim`, heads) and parameters."""
        return self._ctx.raw_model(name)

    def module(self, name: str) -> nn.Module:
        """A registered module to call in train_step (DDP-wrapped when it trains on several processes)."""
        return self._ctx.prepared.modules[name]

    def inputs(self, name: str, part: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The extra inputs model `name` declares (e.g. `meta`), taken from a batch part by name ({} for most)."""
        raw = self.raw_model(name)
        return raw.inputs_from(part) if getattr(raw, "extra_inputs", ()) else {}

    def forward(self, name: str, part: Mapping[str, torch.Tensor], x: torch.Tensor | None = None, **kwargs: Any):
        """Run model `name` on a batch part: its image `x` (or the given tensor, e.g. a mixed batch) plus the extra
        inputs the model declares (e.g. `meta`), taken from the part by name unless given in `kwargs`."""
        return self.model(name)(part["x"] if x is None else x, **{**self.inputs(name, part), **kwargs})

    def frozen_teacher(self, name: str, cache: bool = False) -> Teacher:
        """A frozen teacher over model `name` (which the stage must list in `uses`); `cache=True` keeps each
        training image's logits (checkpointed with the stage; valid only for un-augmented inputs)."""
        if name not in self.cfg.uses:
            raise UserError(f"stages.{self.name}.uses: the teacher '{name}' must be listed under `uses`.")
        t = Teacher(lambda: self.model(name), cache_size=self.teacher_cache_size() if cache else None)
        if cache:
            self.register_state(f"teacher_logits/{name}", t)
        return t

    def teacher_cache_size(self) -> int:
        """Rows of a teacher-logit cache: one per image index any stream can produce."""
        return max(len(getattr(s.dataset, "images", s.dataset)) for s in self.streams.values())

    def ema(self, name: str) -> nn.Module | None:
        """The EMA model of trained model `name` (eval mode, no grad), or None when the stage keeps no EMA."""
        m = self.ema_models.get(name)
        return None if m is None else m.eval_module().eval()

    def schedule(self, schedule: Schedule | ScheduleConfig) -> Scheduled:
        """A scheduled scalar bound to this stage's progress: read `.value` in train_step."""
        return Scheduled(schedule if isinstance(schedule, Schedule) else Schedule(schedule), self.progress)

    def single(self, key: str) -> str:
        names = getattr(self.cfg, key)
        if len(names) != 1:
            raise UserError(
                f"stages.{self.name}.{key}: a '{self.type_name}' stage needs exactly one model here, "
                f"got {names or '[]'}."
            )
        return names[0]

    def transform(self, kind: str) -> Transform:
        return self._ctx.data_services().transform(kind)

    def ssl_split(self) -> tuple[np.ndarray, np.ndarray]:
        """Labelled/unlabelled indices: computed once per run, saved in the run folder, reloaded on resume."""
        return self._ctx.data_services().ssl_split(self.name)

    def view_dataset(self, images: Any, views: Mapping[str, Transform], indices: np.ndarray | None = None):
        """The dataset of a training stream: `views` (name -> transform) of `images` (optionally a subset by
        `indices`), each sample's views seeded by its position in the stream. Per-image on the host, or whole
        batches on the device with `data.pipeline: device`; the stage does not need to know which."""
        return self._ctx.data_services().view_dataset(images, views, indices)

    def one_pass(self, dataset: torch.utils.data.Dataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over a stream dataset (e.g. to fill a memory bank) in fixed order, this rank's share, on the
        device. Batches are equal-sized on every rank; `batch["valid"]` marks the real samples of padded ones."""
        return self._ctx.one_pass(dataset, batch_size, seed=self.seed("one_pass"))

    def seed(self, *salt: int | str) -> int:
        """A seed for the stage's own draws (a memory bank's init, sampled negatives): a hash of the experiment seed,
        the stage's position and `salt`, the same on every rank and independent of the global RNG."""
        return self._ctx.stage_seed(*(zlib.crc32(s.encode()) if isinstance(s, str) else int(s) for s in salt))

    def add_stream(self, name: str, dataset: torch.utils.data.Dataset, batch_size: int | None = None) -> None:
        self.streams[name] = Stream(dataset, batch_size or self.cfg.batch_size)

    def register_state(self, name: str, obj: Stateful) -> Stateful:
        """Anything with state_dict/load_state_dict: checkpointed with the stage, restored on resume."""
        self.states[name] = obj
        return obj

    def register_module(self, name: str, module: nn.Module) -> nn.Module:
        """An extra module (e.g. a learnable temperature, a projection head): optimized with the stage's models,
        DDP-wrapped like them, checkpointed, and saved in the stage's weight files. Call it via `module(name)`."""
        self.modules[name] = module.to(self.device)
        return self.modules[name]

    # ================================================================ what a stage may do to the run
    def replace_model(self, name: str, model: nn.Module) -> None:
        """Swap a model it only reads for another (e.g. a pruned export) for the stages that follow."""
        self._ctx.replace_model(name, model)

    def log(self, record: dict[str, Any]) -> None:
        """One metrics record outside the step (e.g. an export's sizes), already reduced across ranks."""
        self._ctx.log(record)

    def save_weights(self, which: str, weights: dict[str, Any]) -> None:
        """`checkpoints/<stage>/<which>.pt`: {"models": {name: state_dict}, "modules": {...}} with their specs."""
        self._ctx.save_stage_weights(which, weights)

    def parameters_to_train(self) -> list[tuple[str, nn.Parameter]]:
        named = []
        for mname in self.cfg.train:
            named += [(f"{mname}.{n}", p) for n, p in self.raw_model(mname).named_parameters()]
        for mname, mod in self.modules.items():
            named += [(f"{mname}.{n}", p) for n, p in mod.named_parameters()]
        return named  # build_optimizer leaves out frozen parameters (`freeze:`, a frozen module)
