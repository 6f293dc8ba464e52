"""Built-in stage types. Importing this module registers them."""

from ssl_kd.stages import evaluate, export, kd, mixskd, recursivemix, semi_supervised, supervised  # noqa: F401
