"""The torch Dataset the engine loads batches from: one image, several seeded views, and the sample's fields."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ssl_kd.data.augment import Transform
from ssl_kd.data.containers import ImageSet
from ssl_kd.data.hashing import mix_seed

RESERVED_KEYS = ("y", "idx")


class ViewDataset(torch.utils.data.Dataset):
    """`ds[(pos, seed)] -> {view: tensor, ..., "y": int64, "idx": int64, field: tensor, ...}`, idx = indices[pos].

    View k of a sample is drawn with seed mix_seed(seed, k), so adding a view never changes the others'
    randomness order-wise and weak/strong views of one image are independent. A plain int key `pos` is
    accepted too and uses seed = pos (evaluation with a default sampler). The image set's per-sample fields
    (e.g. `meta`) pass through un-augmented under their own names.
    """

    def __init__(self, images: ImageSet, views: Mapping[str, Transform], indices: np.ndarray | None = None):
        clash = [k for k in views if k in RESERVED_KEYS or k in images.fields]
        if clash:
            raise ValueError(
                f"view names {clash} clash with the reserved batch keys {RESERVED_KEYS} or the dataset's fields "
                f"{sorted(images.fields)}"
            )
        self.images = images
        self.views = dict(views)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.targets = images.targets if self.indices is None else images.targets[self.indices]

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        pos, seed = key if isinstance(key, tuple) else (key, key)
        idx = int(pos) if self.indices is None else int(self.indices[pos])
        img = self.images.image(idx)
        out = {name: t(img, mix_seed(seed, k)) for k, (name, t) in enumerate(self.views.items())}
        out["y"] = torch.tensor(int(self.images.targets[idx]), dtype=torch.int64)
        out["idx"] = torch.tensor(idx, dtype=torch.int64)
        for name, value in self.images.sample_fields(idx).items():
            out[name] = torch.as_tensor(value)
        return out
