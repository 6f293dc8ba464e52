"""Typed config schema. Defaults live here; paper settings live in configs/."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


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
    seed: int = 0
    output_dir: str | None = None  # default: runs/<name>
    precision: Literal["no", "fp16", "bf16"] = "no"
    deterministic: bool = False
    logger: LoggerConfig = Field(default_factory=LoggerConfig)


# --------------------------------------------------------------------------------------------- models
class ModelConfig(Strict):
    arch: str
    num_classes: int | None = Field(None, ge=1)  # default: the dataset's class count
    checkpoint: str | None = None  # weights to load when the model is built (ours or a raw state_dict)
    kwargs: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------- stage parts
class OptimizerConfig(Strict):
    """`dot`: the Distillation-Oriented Trainer (SGD with task / distillation momenta momentum -/+ delta)."""

    name: Literal["sgd", "adam", "adamw", "dot"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(5.0e-4, ge=0)
    no_decay_bn_bias: bool = False  # TorchSSL/USB: no wd on params named *bn* or *bias* (and 1-d params)
    betas: tuple[float, float] = (0.9, 0.999)
    delta: float = Field(0.075, ge=0)  # dot: momentum gap (mdistiller CIFAR 0.075, ImageNet 0.09)
    # optimizers that backpropagate loss groups separately (dot: distill, task): which loss terms each group holds;
    # null = the optimizer's default (dot: task = [ce], distill = every other weighted term)
    loss_groups: dict[str, list[str]] | None = None

    @field_validator("nesterov")
    @classmethod
    def _dot_nesterov(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("name") == "dot":
            raise ValueError("optimizer 'dot' has no Nesterov variant; set nesterov: false")
        return value

    @field_validator("delta")
    @classmethod
    def _dot_delta(cls, value: float, info: ValidationInfo) -> float:
        momentum = info.data.get("momentum", 0.9)
        if info.data.get("name") == "dot" and value > momentum:
            raise ValueError(f"must be <= momentum ({momentum}) so that dot's task momentum stays >= 0")
        return value


class SchedulerConfig(Strict):
    """LR multiplier as a function of progress k/K, stepped every `interval`.

    cosine: 0.5(1+cos(pi k/K)) down to min_lr; cosine_cycles: max(0, cos(pi*cycles*k/K)) — TorchSSL/USB's
    `cos(7 pi k / 16K)` is cycles=0.4375; multistep: gamma^(#milestones <= k) with milestones in the stage's
    length unit (epochs for epoch stages, as mdistiller's 150/180/210).
    """

    name: Literal["constant", "cosine", "cosine_cycles", "multistep", "linear"] = "constant"
    interval: Literal["auto", "step", "epoch"] = "auto"  # auto: step for iters stages, epoch for epochs stages
    warmup: int = Field(0, ge=0)  # in intervals, linear from 0
    cycles: float = 0.4375
    milestones: list[int] = Field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = Field(0.0, ge=0)


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
    models: list[str] | None = None  # default: the models the stage trains and reads
    strict: bool = True


class StageConfig(Strict):
    """Keys every stage has. A stage type extends this with its own keys (its `Config`)."""

    type: str
    enabled: bool = True
    train: list[str] = Field(default_factory=list)
    uses: list[str] = Field(default_factory=list)
    iters: int | None = Field(None, ge=0)
    epochs: int | None = Field(None, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1)  # default: len(train data) // batch_size
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

    @model_validator(mode="before")
    @classmethod
    def _merge_nested_defaults(cls, data: Any) -> Any:
        """`ema: {decay: 0.99}` updates this stage type's EMA defaults (e.g. enabled) instead of replacing them."""
        if not isinstance(data, dict):
            return data
        from ssl_kd.config.loader import deep_merge

        out = dict(data)
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
    def _loss_groups(self) -> StageConfig:
        """An optimizer with loss groups (dot) must find each group's terms among this stage's loss terms."""
        from ssl_kd.optim.factory import loss_groups

        loss_groups(self.optimizer, self.loss_weights)
        return self

    @property
    def unit(self) -> Literal["steps", "epochs"]:
        return "epochs" if self.epochs is not None else "steps"


class Config(Strict):
    """The whole experiment. `stages` holds each stage's typed config (validated per stage type)."""

    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    data: Any = None  # ssl_kd.data.DataConfig (validated in validate_config)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    stages: dict[str, Any] = Field(default_factory=dict)
