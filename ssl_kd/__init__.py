"""ssl_kd: semi-supervised learning and knowledge distillation as stages of one runner."""

__version__ = "0.1.0"
