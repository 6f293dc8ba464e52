"""Built-in stage types. Importing this module registers them."""

from ssl_kd.stages import (  # noqa: F401
    cskd,
    ctc,
    dkd,
    evaluate,
    export,
    hsakd,
    kd,
    linear_probe,
    mcl,
    mixskd,
    pad,
    recursivemix,
    semi_supervised,
    sskd,
    supervised,
)
