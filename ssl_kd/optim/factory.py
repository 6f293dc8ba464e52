"""Optimizers and LR schedules from config."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ssl_kd.optim.config import OptimizerConfig, SchedulerConfig
from ssl_kd.optim.dot import DOT


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # TorchSSL/FullMatch: names containing 'bn' or 'bias'; USB adds every parameter with ndim <= 1.
    return "bn" in name or "bias" in name or p.ndim <= 1


def build_optimizer(cfg: OptimizerConfig, named_params: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
    named_params = [(n, p) for n, p in named_params if p.requires_grad]
    if cfg.no_decay_bn_bias:
        decay = [p for n, p in named_params if not _no_decay(n, p)]
        no_decay = [p for n, p in named_params if _no_decay(n, p)]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": [p for _, p in named_params], "weight_decay": cfg.weight_decay}]
    if cfg.name == "dot":
        return DOT(groups, lr=cfg.lr, momentum=cfg.momentum, delta=cfg.delta)
    impl = _impl(cfg.impl, named_params)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **impl)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **impl)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **impl)


def _impl(impl: str, named_params: list[tuple[str, nn.Parameter]]) -> dict[str, bool]:
    """torch's `fused` / `foreach` flags for the configured update kernel."""
    on_cuda = bool(named_params) and all(p.device.type == "cuda" for _, p in named_params)
    if impl == "fused" or (impl == "auto" and on_cuda):
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    if impl == "loop":
        return {"foreach": False}
    return {}


def lr_factor(cfg: SchedulerConfig, total: int, base_lr: float) -> Callable[[int], float]:
    """Multiplier of the base LR after k scheduler steps, over a horizon of `total` steps."""
    floor = min(1.0, cfg.min_lr / base_lr) if base_lr > 0 else 0.0

    def f(k: int) -> float:
        if cfg.warmup and k < cfg.warmup:
            return (k + 1) / cfg.warmup
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "multistep":
            return cfg.gamma ** sum(k >= m for m in cfg.milestones)
        span = max(1, total - cfg.warmup)
        t = min(1.0, (k - cfg.warmup) / span)
        if cfg.name == "cosine":
            v = 0.5 * (1.0 + math.cos(math.pi * t))
        elif cfg.name == "cosine_cycles":
            v = max(0.0, math.cos(math.pi * cfg.cycles * t))
        else:  # linear
            v = 1.0 - t
        return floor + (1.0 - floor) * v

    return f


def build_scheduler(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    fns = [lr_factor(cfg, total, g["lr"]) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fns)
