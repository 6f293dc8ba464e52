"""Optimizer and LR-schedule factories."""

from ssl_kd.optim.dot import DOT
from ssl_kd.optim.factory import build_optimizer, build_scheduler, loss_groups, lr_factor
from ssl_kd.optim.group_grads import GroupGrads

__all__ = ["DOT", "GroupGrads", "loss_groups", "build_optimizer", "build_scheduler", "lr_factor"]
