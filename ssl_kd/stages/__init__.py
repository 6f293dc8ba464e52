"""Built-in stage types. Importing this module registers them."""

from ssl_kd.stages import evaluate, export, kd, semi_supervised, supervised  # noqa: F401
