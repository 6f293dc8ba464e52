"""Optimizers, LR schedules and backward strategies, with their config blocks (`optimizer:`, `scheduler:`)."""

from ssl_kd.optim.backward import GroupedBackward, MissingTerm, SummedBackward, make_backward, weighted_sum
from ssl_kd.optim.config import OptimizerConfig, SchedulerConfig
from ssl_kd.optim.dot import DOT
from ssl_kd.optim.factory import build_optimizer, build_scheduler, lr_factor
from ssl_kd.optim.group_grads import GroupGrads
from ssl_kd.optim.groups import loss_groups

__all__ = [
    "DOT",
    "GroupGrads",
    "GroupedBackward",
    "MissingTerm",
    "OptimizerConfig",
    "SchedulerConfig",
    "SummedBackward",
    "build_optimizer",
    "build_scheduler",
    "loss_groups",
    "lr_factor",
    "make_backward",
    "weighted_sum",
]
