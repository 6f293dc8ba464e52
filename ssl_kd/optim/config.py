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

    def describe(self) -> str:
        """One line for --dry-run: the options this optimizer uses."""
        parts = [f"{self.name} lr {self.lr:g}"]
        if self.name in ("sgd", "dot"):
            parts.append(f"momentum {self.momentum:g}" + (" nesterov" if self.nesterov else ""))
        if self.name in ("adam", "adamw"):
            parts.append(f"betas {tuple(self.betas)}")
        parts.append(f"wd {self.weight_decay:g}" + (" (none on BN/bias)" if self.no_decay_bn_bias else ""))
        if self.name == "dot":
            m, d = self.momentum, self.delta
            parts.append(f"delta {d:g} (task momentum {m - d:g}, distillation momentum {m + d:g})")
        if self.loss_groups:
            parts.append(f"loss groups {self.loss_groups}")
        if self.impl != "auto" and self.name != "dot":  # dot steps its own momenta (factory.py)
            parts.append(f"{self.impl} update kernel")
        return ", ".join(parts)

    @field_validator("nesterov")
    @classmethod
    def _dot_nesterov(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("name") == "dot":
            raise ValueError("optimizer 'dot' has no Nesterov variant; set nesterov: false")
        if value and info.data.get("name", "sgd") == "sgd" and info.data.get("momentum", 0.9) == 0:
            raise ValueError(
                "Nesterov needs momentum > 0 (torch.optim.SGD refuses it); set momentum or nesterov: false"
            )
        return value

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("Adam's betas must each be in [0, 1), e.g. [0.9, 0.999]")
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
    milestones: list[int] = Field(default_factory=list)  # positive and increasing
    gamma: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0)

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, value: list[int]) -> list[int]:
        if any(m < 1 for m in value) or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("milestones must be positive and increasing, e.g. [150, 180, 210]")
        return value

    def describe(self, per_epoch: bool) -> str:
        """One line for --dry-run: the LR multiplier and how often it steps."""
        shape = {
            "constant": "constant",
            "cosine": f"cosine to min_lr {self.min_lr:g}",
            "cosine_cycles": f"cos({self.cycles:g} pi k/K)",
            "multistep": f"x{self.gamma:g} at {self.milestones} {'epochs' if per_epoch else 'steps'}",
            "linear": f"linear to min_lr {self.min_lr:g}",
        }[self.name]
        warm = f", {self.warmup} {'epoch' if per_epoch else 'step'}(s) linear warm-up" if self.warmup else ""
        return f"{shape}{warm}, stepped per {'epoch' if per_epoch else 'step'}"
