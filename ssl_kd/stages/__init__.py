"""Built-in stage types. Importing this module registers them."""

from ssl_kd.stages import (  # noqa: F401
    cskd,
    ctc,
    evaluate,
    export,
    kd,
    linear_probe,
    mixskd,
    recursivemix,
    semi_supervised,
    sskd,
    supervised,
)
