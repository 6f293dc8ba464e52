"""Engine: the Runner, the Stage base class, callbacks' base and order, run folder and checkpoint I/O."""

from ssl_kd.engine.callback import Callback, CallbackOrder
from ssl_kd.engine.registry import register_stage, stage_types
from ssl_kd.engine.run_dir import RunDir, read_metrics
from ssl_kd.engine.runner import Runner, TrainingStopped
from ssl_kd.engine.stage import Stage, Stream

__all__ = [
    "Callback",
    "CallbackOrder",
    "RunDir",
    "Runner",
    "Stage",
    "Stream",
    "TrainingStopped",
    "read_metrics",
    "register_stage",
    "stage_types",
]
