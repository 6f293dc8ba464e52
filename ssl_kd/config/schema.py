"""Typed config schema of the experiment, its models and the keys every stage has. Defaults live here; paper
settings live in configs/. Blocks owned by a lower layer (`data:`, `optimizer:`, `scheduler:`) are defined there
and assembled here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ssl_kd.config.loader import deep_merge
from ssl_kd.data.sampler import SamplerConfig
from ssl_kd.optim.config import OptimizerConfig, SchedulerConfig
from ssl_kd.optim.groups import loss_groups
from ssl_kd.options import Strict
from ssl_kd.prune.config import PruneConfig


# --------------------------------------------------------------------------------------------- experiment
class WandbConfig(Strict):
    """W&B logging. `mode` None defers to WANDB_MODE (tests set `disabled`)."""

    project: str = "ssl_kd"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class LoggerConfig(Strict):
    progress: bool = True
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl / W&B records")
    wandb: WandbConfig | None = None


class ExperimentConfig(Strict):
    name: str | None = None  # default: the config file's stem
    # modules (dotted, importable from the current directory) or .py files (relative to the config) imported before
    # validation: a user's own @register_model / @register_stage without an entry point (`--import` adds to it)
    imports: list[str] = Field(default_factory=list)
    seed: int = 0
    output_dir: str | None = None  # default: runs/<name>
    # "auto": bf16 autocast on GPUs that support it, fp32 elsewhere (engine/resources.py: choose_speed); "no" = fp32
    precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    # models and device-made batches in NHWC memory layout (faster convs on GPUs); "auto": on for a GPU
    channels_last: bool | Literal["auto"] = "auto"
    # torch.compile the models a stage trains: "default", or "reduce-overhead" (adds CUDA graphs) / "max-autotune"
    compile: Literal["no", "default", "reduce-overhead", "max-autotune"] = "no"
    deterministic: bool = False
    logger: LoggerConfig = Field(default_factory=LoggerConfig)


# --------------------------------------------------------------------------------------------- models
# A bound on `num_classes`, far above any dataset here (ImageNet-21k: 21,841): a mistyped 10**9 would otherwise
# allocate a 10**9-row classifier and kill the process, even under --dry-run.
MAX_CLASSES = 1_000_000


class ModelConfig(Strict):
    arch: str
    num_classes: int | None = Field(None, ge=1, le=MAX_CLASSES)  # default: the dataset's class count
    checkpoint: str | None = None  # weights to load when the model is built (ours or a raw state_dict)
    # true: load only the tensors whose name and shape fit (an ImageNet backbone under a new head/fc); the rest keep
    # their fresh init and the run says how many were skipped
    checkpoint_partial: bool = False
    # torchvision's ImageNet weights by name (IMAGENET1K_V1, DEFAULT, ...) for the models that carry its layer names
    pretrained: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    head: dict[str, Any] | None = None  # a head the model carries, e.g. {type: dynamic_mlp, variant: c}


# --------------------------------------------------------------------------------------------- stage parts
class EvalConfig(Strict):
    every: int | None = Field(None, ge=1)  # in `unit`; None: every epoch for epoch stages, at the end otherwise
    unit: Literal["auto", "steps", "epochs"] = "auto"  # auto: the stage's length unit
    batch_size: int = Field(256, ge=1)
    models: list[str] | None = None  # default: the models the stage trains (or reads, for `evaluate`)
    raw: bool = True  # with EMA on, also evaluate the raw (non-averaged) model


class EMAConfig(Strict):
    """EMA of parameters (torch.optim.swa_utils.AveragedModel).

    Defaults follow the SSL references: parameters only, BN buffers taken from the live model at eval time,
    shadow initialised to the starting weights with no bias correction.
    """

    enabled: bool = False
    decay: float = Field(0.999, ge=0, lt=1)
    average_buffers: bool = False
    apply_at_end: bool = True  # the model leaves the stage with the EMA weights (what evaluation reported)


class CheckpointConfig(Strict):
    every: int | None = Field(None, ge=1)  # in `unit`; None: every epoch / every 1000 steps
    unit: Literal["auto", "steps", "epochs"] = "auto"
    save_best: bool = True


class InitConfig(Strict):
    """How a stage starts: the live models (default), a previous stage's best/last weights, or a file."""

    mode: Literal["continue", "stage", "checkpoint"] = "continue"
    stage: str | None = None  # mode=stage: which earlier stage (default: the previous one)
    which: Literal["best", "last"] = "best"
    path: str | None = None  # mode=checkpoint
    models: list[str] | None = None  # default: the models the stage trains and reads ([]: none)
    # registered modules of this stage (e.g. a projection head trained by an earlier stage) loaded from the same
    # source's `modules` when the stage starts fresh, after its setup() registered them
    modules: list[str] = Field(default_factory=list)
    strict: bool = True


class SnapshotConfig(Strict):
    """A frozen copy of model `of`, taken when the stage starts (after its `init`), available to this and later
    stages as model `as`: read like any other model (list it under `uses`), eval mode, no grad, checkpointed with
    the run (a resumed stage keeps the copy it took, not a copy of the weights trained since)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    of: str
    as_: str = Field(alias="as")


class StageConfig(Strict):
    """Keys every stage has. A stage type extends this with its own keys (its `Config`)."""

    type: str
    enabled: bool = True
    train: list[str] = Field(default_factory=list)
    uses: list[str] = Field(default_factory=list)
    # parts of trained models kept frozen in this stage ("teacher.backbone", or a whole model): eval mode, no grad,
    # out of the optimizer (HSAKD's teacher with a pretrained backbone trains only its auxiliary branches)
    freeze: list[str] = Field(default_factory=list)
    iters: int | None = Field(None, ge=0)
    epochs: int | None = Field(None, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1)  # default: len(train data) // batch_size
    # an epoch's last, partial batch: drop it (len // batch_size steps, e.g. 781 on CIFAR at 64) or keep it as a
    # smaller step (ceil(len / batch_size), 782: PyTorch's DataLoader default, which mdistiller and most references use)
    last_batch: Literal["drop", "keep"] = "drop"
    batch_size: int = Field(64, ge=1)  # global: divided across processes and accumulation steps
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    loss_weights: dict[str, float] = Field(default_factory=dict)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    nan_guard: bool = True
    prune: PruneConfig | None = None  # filter pruning while the stage trains (ssl_kd/prune/config.py)
    # frozen copies of models taken at the stage's start: `snapshot: {of: net, as: net_t0}` (or a list of them)
    snapshot: list[SnapshotConfig] = Field(default_factory=list)
    # this stage's own dataset: the top-level `data:` schema, merged key by key over it (null: the top-level data)
    data: Any = None
    # how the labelled stream draws batches: `{kind: m_per_class, m: 2}` = MCL's class-aware batches (data/sampler.py)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)

    @field_validator("snapshot", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else ([] if value is None else value)

    @classmethod
    def migrate(cls, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Old spellings this stage type still accepts, rewritten to the current ones: (new block, one note per
        rewrite for `--dry-run`). A stage type overrides it (calling super) when it renames or regroups keys; a
        rewrite may change `type` (an alias of another stage type)."""
        return data, []

    @classmethod
    def derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Defaults that depend on other keys of the block (e.g. a term's weight 0 when its switch is off): merged
        under what the YAML gives, key by key. A stage type overrides it; it may raise ValueError for a block that
        contradicts itself."""
        return {}

    @model_validator(mode="before")
    @classmethod
    def _merge_nested_defaults(cls, data: Any) -> Any:
        """Old keys first (`migrate`), then the defaults that depend on other keys (`derived_defaults`); then
        `ema: {decay: 0.99}` updates this stage type's EMA defaults (e.g. enabled) instead of replacing them."""
        if not isinstance(data, dict):
            return data
        out, _ = cls.migrate(dict(data))
        out = deep_merge(cls.derived_defaults(out), out)
        for name, field in cls.model_fields.items():
            if isinstance(out.get(name), dict) and field.default_factory is not None:
                default = field.get_default(call_default_factory=True)
                if isinstance(default, BaseModel):
                    out[name] = deep_merge(default.model_dump(exclude_unset=True), out[name])
        return out

    @field_validator("loss_weights", mode="before")
    @classmethod
    def _merge_weights(cls, value: Any) -> Any:
        """Weights given in YAML update the stage type's defaults term by term; unknown terms are errors."""
        default = cls.model_fields["loss_weights"].get_default(call_default_factory=True) or {}
        if value is None:
            return default
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(default))
        if default and unknown:
            raise ValueError(f"unknown loss term(s) {unknown}; this stage's terms are {sorted(default)}")
        return {**default, **value}

    @model_validator(mode="after")
    def _one_length(self) -> StageConfig:
        if self.iters is not None and self.epochs is not None:
            raise ValueError("give the stage length as `iters` or `epochs`, not both")
        return self

    @model_validator(mode="after")
    def _frozen_parts_of_trained_models(self) -> StageConfig:
        for path in self.freeze:
            if path.split(".")[0] not in self.train:
                raise ValueError(f"freeze: '{path}' is not a part of a model this stage trains {self.train}")
        return self

    @model_validator(mode="after")
    def _whole_classes(self) -> StageConfig:
        if self.sampler.kind == "m_per_class" and self.batch_size % self.sampler.m:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of sampler.m = {self.sampler.m}: a class-aware "
                f"batch holds m images of each class it draws; set batch_size to a multiple of {self.sampler.m}"
            )
        return self

    @model_validator(mode="after")
    def _prune_models(self) -> StageConfig:
        if self.prune is not None:
            names = self.prune.models or self.train
            if not names:
                raise ValueError("prune: this stage trains no model to prune (prune.models / train are empty)")
            if set(names) - set(self.train):
                raise ValueError(f"prune.models: {sorted(set(names) - set(self.train))} are not trained by this stage")
        return self

    @model_validator(mode="after")
    def _loss_groups(self) -> StageConfig:
        """An optimizer with loss groups (dot) must find each group's terms among this stage's loss terms."""
        loss_groups(self.optimizer, self.loss_weights)
        return self

    @property
    def unit(self) -> Literal["steps", "epochs"]:
        return "epochs" if self.epochs is not None else "steps"

    def blocks_in_use(self) -> set[str]:
        """Option blocks that shape this stage even at their defaults (e.g. `dkd` under `loss: dkd`): `--dry-run`
        lists them with the blocks the YAML sets. A stage type overrides this; the engine stays method-agnostic."""
        return set()


class Config(Strict):
    """The whole experiment. `stages` holds each stage's typed config (validated per stage type)."""

    # per stage, the old keys its YAML used and what they now are (StageConfig.migrate): --dry-run lists them
    _deprecations: dict[str, list[str]] = PrivateAttr(default_factory=dict)

    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    data: Any = None  # ssl_kd.data.DataConfig (validated in validate_config)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    stages: dict[str, Any] = Field(default_factory=dict)
