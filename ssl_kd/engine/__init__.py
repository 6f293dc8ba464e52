"""Engine: the Runner and its parts (build, state, evaluation, streams, plan, services), the Stage base class,
callbacks' base and order, run folder and checkpoint I/O."""

from ssl_kd.config.registry import register_stage, stage_types
from ssl_kd.engine.callback import Callback, CallbackOrder
from ssl_kd.engine.run_dir import RunDir, read_metrics
from ssl_kd.engine.runner import Runner
from ssl_kd.engine.stage import Plot, Progress, Stage, Stream
from ssl_kd.errors import TrainingStopped

__all__ = [
    "Callback",
    "CallbackOrder",
    "Plot",
    "Progress",
    "RunDir",
    "Runner",
    "Stage",
    "Stream",
    "TrainingStopped",
    "read_metrics",
    "register_stage",
    "stage_types",
]
