"""Optimizer and LR-schedule factories."""

from ssl_kd.optim.factory import build_optimizer, build_scheduler, lr_factor

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]
