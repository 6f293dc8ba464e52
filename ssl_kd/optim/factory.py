"""Optimizers and LR schedules from config."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ssl_kd.config.schema import OptimizerConfig, SchedulerConfig
from ssl_kd.optim.dot import DOT

# optimizers that take their loss in groups (see `loss_groups`); the others take one summed loss
_GROUPED: dict[str, type[torch.optim.Optimizer]] = {"dot": DOT}


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
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "dot":
        return DOT(groups, lr=cfg.lr, momentum=cfg.momentum, delta=cfg.delta)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def loss_groups(cfg: OptimizerConfig, weights: dict[str, float]) -> list[tuple[str, dict[str, float]]] | None:
    """The weighted loss terms of each loss group, in backward order; None for an optimizer that takes one sum.

    An optimizer class may declare `loss_groups = {group: terms | None}` (ordered; None = every weighted term no
    other group claims) and `step_group(group)`. The runner then backpropagates each group separately, hands each
    group but the last to `step_group`, and calls `step()` with the last group's gradient in `.grad`.
    `cfg.loss_groups` overrides the declared terms per group. Raises ValueError (a config error) on a term that is
    not a loss term of the stage, a term in two groups, a term in none, or a group left without weighted terms.
    """
    declared = getattr(_GROUPED.get(cfg.name), "loss_groups", None)
    if declared is None:
        if cfg.loss_groups:
            raise ValueError(
                f"optimizer.loss_groups: optimizer '{cfg.name}' takes one summed loss; only {sorted(_GROUPED)} "
                f"backpropagate loss groups"
            )
        return None
    given = cfg.loss_groups or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"optimizer.loss_groups: optimizer '{cfg.name}' has no group {unknown}; its groups are "
                         f"{list(declared)}")  # fmt: skip
    owner: dict[str, str] = {}
    catch_all = None
    for group, default in declared.items():
        terms = given.get(group, default)
        if terms is None:
            catch_all = group
            continue
        for term in terms:
            if term not in weights:
                raise ValueError(f"optimizer.loss_groups.{group}: '{term}' is not a loss term of this stage; its "
                                 f"terms are {sorted(weights)}")  # fmt: skip
            if term in owner:
                raise ValueError(f"optimizer.loss_groups: term '{term}' is in both '{owner[term]}' and '{group}'")
            owner[term] = group
    out = []
    for group in declared:
        terms = {t: w for t, w in weights.items() if w != 0 and owner.get(t, catch_all) == group}
        if not terms:
            raise ValueError(
                f"optimizer.loss_groups.{group}: optimizer '{cfg.name}' needs at least one term with a non-zero "
                f"loss weight in its '{group}' group; loss weights here are {weights}"
            )
        out.append((group, terms))
    stray = sorted(t for t, w in weights.items() if w != 0 and owner.get(t, catch_all) is None)
    if stray:
        raise ValueError(f"optimizer.loss_groups: term(s) {stray} belong to no group of optimizer '{cfg.name}'")
    return out


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
