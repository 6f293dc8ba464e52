"""Built-in stage types. Importing this module registers them."""

from ssl_kd.stages import ctc, evaluate, kd, linear_probe, semi_supervised, supervised  # noqa: F401
