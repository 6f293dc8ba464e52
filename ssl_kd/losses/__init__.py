"""Pure loss functions: no state, no config; stages compose them."""

from ssl_kd.losses.ce import accuracy, soft_cross_entropy
from ssl_kd.losses.kd import kd_loss

__all__ = ["accuracy", "kd_loss", "soft_cross_entropy"]
