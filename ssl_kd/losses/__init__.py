"""Pure loss functions: no state, no config; stages compose them."""

from ssl_kd.losses.ce import accuracy, soft_cross_entropy
from ssl_kd.losses.kd import kd_loss
from ssl_kd.losses.ssl import (
    adaptive_topk,
    anl_loss,
    consistency_loss,
    convex_mapping,
    eml_loss,
    flexmatch_beta,
    flexmatch_class_thresholds,
    topk_rank,
)

__all__ = [
    "accuracy",
    "adaptive_topk",
    "anl_loss",
    "consistency_loss",
    "convex_mapping",
    "eml_loss",
    "flexmatch_beta",
    "flexmatch_class_thresholds",
    "kd_loss",
    "soft_cross_entropy",
    "topk_rank",
]
