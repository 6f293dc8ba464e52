"""Components a stage composes, chosen by config: scheduled scalars, threshold and temperature policies, and a
frozen teacher. Each keeps its own state (checkpointable) and hides the collectives it needs, so a stage's
`train_step` reads like its paper's algorithm box."""

from ssl_kd.components.adaptive_k import global_adaptive_k
from ssl_kd.components.contrast import ClassNegatives, FixedNormaliser
from ssl_kd.components.knowledge_adjust import KAOptions, TeacherTarget
from ssl_kd.components.policy import PolicyOptions, PolicyRegistry
from ssl_kd.components.schedule import Progress, Schedule, ScheduleConfig, Scheduled, ramp
from ssl_kd.components.teacher import Teacher
from ssl_kd.components.temperature import (
    TEMPERATURE,
    CTKDOptions,
    CTKDTemperature,
    DTDOptions,
    DTDTemperature,
    FixedTemperature,
    TemperatureOptions,
)
from ssl_kd.components.threshold import THRESHOLD, FixedThreshold, FlexThreshold, ThresholdOptions

__all__ = [
    "TEMPERATURE",
    "THRESHOLD",
    "CTKDOptions",
    "CTKDTemperature",
    "ClassNegatives",
    "KAOptions",
    "TeacherTarget",
    "DTDOptions",
    "DTDTemperature",
    "FixedTemperature",
    "FixedNormaliser",
    "FixedThreshold",
    "FlexThreshold",
    "Progress",
    "Schedule",
    "ScheduleConfig",
    "Scheduled",
    "Teacher",
    "PolicyOptions",
    "PolicyRegistry",
    "TemperatureOptions",
    "ThresholdOptions",
    "global_adaptive_k",
    "ramp",
]
