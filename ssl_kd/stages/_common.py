"""Pieces several stage types share (no method logic here)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ssl_kd.data import MixConfig, MixParams, mix_tensors, one_hot, sample_mix
from ssl_kd.engine.stage import Stage
from ssl_kd.errors import UserError

Augment = Literal["weak", "strong", "none"]
Subset = Literal["all", "labeled"]


def labelled_views(stage: Stage, augment: Augment, subset: Subset):
    """The labelled training images as one view `x`, optionally only the SSL split's labelled subset."""
    indices = stage.ssl_split()[0] if subset == "labeled" else None
    return stage.view_dataset(
        stage.data.train, {"x": stage.transform("test" if augment == "none" else augment)}, indices
    )


def mix_batch(
    mix: MixConfig, x: torch.Tensor, y: torch.Tensor | None = None, num_classes: int = 0,
    extra: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor] | None, MixParams | None]:  # fmt: skip
    """One drawn `mix:` of a batch: the images, the one-hot labels (when given) and the model's extra inputs
    (metadata) mixed with the same lambda and partner. (mixed parts, the mix), or (None, None) when this batch
    stays unmixed (kind none, or not drawn with probability `prob`)."""
    params = sample_mix(mix, x.shape[0], (x.shape[-2], x.shape[-1]))
    if params is None:
        return None, None
    parts = {"x": x} if y is None else {"x": x, "y": one_hot(y, num_classes, dtype)}
    return mix_tensors({**parts, **(extra or {})}, params), params


def unlabelled_pool(stage: Stage):
    """(images, indices) of the unlabelled set: the split's unlabelled train images plus, when the dataset has
    one, its separate unlabelled split (STL-10 unlabeled, SVHN extra). Train images keep their own indices."""
    from ssl_kd.data import concat_image_sets

    ulb = np.asarray(stage.ssl_split()[1])
    extra = stage.data.unlabeled
    if extra is None:
        return stage.data.train, ulb
    pool = concat_image_sets(stage.data.train, extra)
    return pool, np.concatenate([ulb, len(stage.data.train) + np.arange(len(extra))])


def check_same_classes(stage: Stage, *names: str) -> dict[str, int | None]:
    """Models distilled into one another (student, teacher) or ensembled (peers) must share their classes; returns
    each model's count."""
    classes = {n: getattr(stage.raw_model(n), "num_classes", None) for n in names}
    if len(set(classes.values())) > 1:
        raise UserError(
            f"stages.{stage.name}: {list(names)} must have the same number of classes to be distilled or "
            f"ensembled, got {classes}; check models.<name>.num_classes."
        )
    return classes


def feat_dim(stage: Stage, name: str) -> int:
    """The width of model `name`'s pooled feature, for a head or connector on it (a clear error when undeclared)."""
    dim = getattr(stage.raw_model(name), "feat_dim", None)
    if not isinstance(dim, int):
        raise UserError(f"stages.{stage.name}: model '{name}' declares no `feat_dim` (its pooled feature's width).")
    return dim
