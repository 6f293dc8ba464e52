"""Built-in stage types. Importing this module registers them."""

from ssl_kd.stages import evaluate, kd, mixskd, recursivemix, semi_supervised, supervised  # noqa: F401
