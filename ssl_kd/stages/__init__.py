"""Built-in stage types. Importing this module registers them."""

from ssl_kd.stages import (  # noqa: F401
    cskd,
    ctc,
    dkd,
    eval_only,
    hsakd,
    kd,
    linear_probe,
    mcl,
    mixskd,
    pad,
    pruned_export,
    recursivemix,
    semi_supervised,
    sskd,
    supervised,
)
