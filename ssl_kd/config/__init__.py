"""Config: typed schema, YAML with `_base_`, overrides from the CLI and W&B sweeps."""

from ssl_kd.config.loader import (
    apply_overrides,
    deep_merge,
    load_yaml,
    parse_overrides,
    parse_value,
    unflatten,
)
from ssl_kd.config.registry import register_stage, stage_types
from ssl_kd.config.schema import (
    CheckpointConfig,
    Config,
    EMAConfig,
    EvalConfig,
    ExperimentConfig,
    InitConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    StageConfig,
)
from ssl_kd.config.validate import resolve_config, resolved_dict, validate_config

__all__ = [
    "CheckpointConfig",
    "Config",
    "EMAConfig",
    "EvalConfig",
    "ExperimentConfig",
    "InitConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "StageConfig",
    "apply_overrides",
    "deep_merge",
    "load_yaml",
    "parse_overrides",
    "parse_value",
    "register_stage",
    "resolve_config",
    "resolved_dict",
    "stage_types",
    "unflatten",
    "validate_config",
]
