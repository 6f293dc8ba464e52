"""The `optimizer:` and `scheduler:` blocks of a stage. The optim layer owns its schema; config assembles it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ssl_kd.options import Strict


class OptimizerConfig(Strict):
    """`dot`: the Distillation-Oriented Trainer (SGD with task / distillation momenta momentum -/+ delta)."""

    name: Literal["sgd", "adam", "adamw", "dot"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(5.0e-4, ge=0)
    no_decay_bn_bias: bool = False  # TorchSSL/USB: no wd on params named *bn* or *bias* (and 1-d params)
    betas: tuple[float, float] = (0.9, 0.999)
    # the update kernel: fused (one kernel for all parameters; CUDA), foreach (a few batched kernels), loop (one per
    # parameter). auto = fused on CUDA, torch's own default elsewhere (on CPU: the loop, the reference arithmetic)
    impl: Literal["auto", "fused", "foreach", "loop"] = "auto"
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
