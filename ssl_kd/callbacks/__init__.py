"""Callbacks: everything that is not the method. One concern per file, run in CallbackOrder."""

from __future__ import annotations

from ssl_kd.callbacks.checkpoint import Checkpoint
from ssl_kd.callbacks.ema import EMA, EMAModel
from ssl_kd.callbacks.jsonl import JsonlLogger
from ssl_kd.callbacks.lr import LRScheduler
from ssl_kd.callbacks.metrics import TrainMetrics
from ssl_kd.callbacks.nan_guard import NanGuard
from ssl_kd.callbacks.progress import ProgressLogger
from ssl_kd.callbacks.prune import Prune
from ssl_kd.callbacks.scheduled_eval import Evaluation
from ssl_kd.callbacks.wandb_logger import WandbLogger
from ssl_kd.engine.callback import Callback


def stage_callbacks(runner, stage) -> list[Callback]:
    """The callbacks every stage runs with, built from its config (the stage adds its own via `callbacks()`)."""
    cfg = stage.cfg
    cbs: list[Callback] = []
    if stage.trains:
        if cfg.nan_guard:
            cbs.append(NanGuard())
        cbs += [LRScheduler(), TrainMetrics(runner)]
        if cfg.ema.enabled:
            cbs.append(EMA(runner, cfg.ema.decay, cfg.ema.apply_at_end))
        if cfg.prune is not None:
            cbs.append(Prune(runner, stage))
    cbs += [Evaluation(runner), Checkpoint(runner)]
    return sorted(cbs, key=lambda c: c.order)


def experiment_callbacks(runner_cfg) -> list[Callback]:
    """Loggers that live for the whole run."""
    log = runner_cfg.experiment.logger
    cbs: list[Callback] = [JsonlLogger(), ProgressLogger(bar=log.progress)]
    if log.wandb is not None:
        cbs.append(WandbLogger(log.wandb))
    return cbs


__all__ = [
    "EMA",
    "Callback",
    "Checkpoint",
    "EMAModel",
    "Evaluation",
    "JsonlLogger",
    "LRScheduler",
    "NanGuard",
    "ProgressLogger",
    "Prune",
    "TrainMetrics",
    "WandbLogger",
    "experiment_callbacks",
    "stage_callbacks",
]
