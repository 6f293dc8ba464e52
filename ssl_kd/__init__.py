"""ssl_kd: semi-supervised learning and knowledge distillation as stages of one runner.

`ssl_kd.load_model(run_dir_or_file, name)` gives a trained model for inference (see ssl_kd/api.py); it is imported
on first use, so `import ssl_kd` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from ssl_kd.api import load_model

        return load_model
    raise AttributeError(f"module 'ssl_kd' has no attribute {name!r}")
