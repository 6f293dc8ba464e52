"""Where a run stands: its models, the stage in progress and that stage's training objects, the counters and the
results so far. One explicit object that the Runner advances, a checkpoint captures (`engine.resume`) and a
`--dry-run` walks (`engine.plan`), instead of attributes spread over the Runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ssl_kd.engine.callback import Callback
    from ssl_kd.engine.stage import Stage


@dataclass
class RunState:
    models: dict[str, nn.Module] = field(default_factory=dict)
    stage: Stage | None = None
    stage_index: int = 0
    global_step: int = 0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-stage last/best metrics (the summary)
    wandb_id: str | None = None
    # the stage in progress: its optimizer, LR scheduler and callbacks (rebuilt by every stage)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scheduler_per_epoch: bool = False
    callbacks: list[Callback] = field(default_factory=list)
