"""Pieces several stage types share (no method logic here)."""

from __future__ import annotations

from typing import Literal

from ssl_kd.engine.stage import Stage

Augment = Literal["weak", "strong", "none"]
Subset = Literal["all", "labeled"]


def labelled_views(stage: Stage, augment: Augment, subset: Subset):
    """The labelled training images as one view `x`, optionally only the SSL split's labelled subset."""
    from ssl_kd.data import ViewDataset

    indices = stage.ssl_split()[0] if subset == "labeled" else None
    return ViewDataset(stage.data.train, {"x": stage.transform("test" if augment == "none" else augment)}, indices)
