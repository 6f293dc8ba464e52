"""The torch Dataset the engine loads batches from: one image, several seeded views, and the sample's fields."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import torch

from ssl_kd.data.augment import Transform
from ssl_kd.data.containers import ImageSet
from ssl_kd.data.hashing import mix_seed
from ssl_kd.data.image_files import UnreadableImage
from ssl_kd.errors import UserError

RESERVED_KEYS = ("y", "idx")
log = logging.getLogger("ssl_kd.data")
SKIPPED: dict[str, str] = {}  # file -> reason: the unreadable images this process has skipped


class ViewDataset(torch.utils.data.Dataset):
    """`ds[(pos, seed)] -> {view: tensor, ..., "y": int64, "idx": int64, field: tensor, ...}`, idx = indices[pos].

    View k of a sample is drawn with seed mix_seed(seed, k), so adding a view never changes the others'
    randomness order-wise and weak/strong views of one image are independent. A plain int key `pos` is
    accepted too and uses seed = pos (evaluation with a default sampler). The image set's per-sample fields
    (e.g. `meta`) pass through un-augmented under their own names.
    """

    def __init__(
        self, images: ImageSet, views: Mapping[str, Transform], indices: np.ndarray | None = None,
        defer_normalize: bool = False,
    ):  # fmt: skip
        clash = [k for k in views if k in RESERVED_KEYS or k in images.fields]
        if clash:
            raise ValueError(
                f"view names {clash} clash with the reserved batch keys {RESERVED_KEYS} or the dataset's fields "
                f"{sorted(images.fields)}"
            )
        self.images = images
        self.views = dict(views)
        # views whose transform finishes on the batch (uint8 out of the worker, normalised on the device): large-image
        # crops always; the other views when `defer_normalize` (the runner asks for it on a GPU: a quarter of the
        # bytes to pin and copy, and the values are identical)
        self._finish = {n: t.finish for n, t in self.views.items() if _defers(t, defer_normalize)}
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.targets = images.targets if self.indices is None else images.targets[self.indices]

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        """An unreadable image file (corrupt, truncated) is skipped: the sample at the next position stands in for
        it with the same seed (a pure function of the position, so resume stays exact), and the file is logged
        once per process; with `strict` (data.transform.strict) it is an error instead."""
        pos, seed = key if isinstance(key, tuple) else (key, key)
        err = None
        for k in range(len(self)):
            try:
                return self._sample((int(pos) + k) % len(self), seed)
            except UnreadableImage as e:
                err = e
                if getattr(self.images, "strict", False):
                    raise UserError(f"{e} (data.transform.strict: true stops on unreadable images).") from None
                if e.path not in SKIPPED:
                    SKIPPED[e.path] = e.reason
                    log.warning(
                        "skipped unreadable image %s (%s); %d skipped so far in this process (pid %d)",
                        e.path, e.reason, len(SKIPPED), os.getpid(),
                    )  # fmt: skip
        raise UserError(f"no readable image among the {len(self)} samples of this dataset (e.g. {err}).")

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch as the model takes it: deferred views (uint8) normalised, where the batch is (the device). Every
        consumer of this dataset's batches calls it after moving them (the runner's streams, one_pass, evaluation)."""
        if not self._finish:
            return batch
        return {k: self._finish[k](v) if k in self._finish else v for k, v in batch.items()}

    def _sample(self, pos: int, seed: int) -> dict[str, torch.Tensor]:
        idx = int(pos) if self.indices is None else int(self.indices[pos])
        img = self.images.image(idx)
        out = {
            name: (t.crop_uint8 if name in self._finish else t)(img, mix_seed(seed, k))
            for k, (name, t) in enumerate(self.views.items())
        }
        out["y"] = torch.tensor(int(self.images.targets[idx]), dtype=torch.int64)
        out["idx"] = torch.tensor(idx, dtype=torch.int64)
        for name, value in self.images.sample_fields(idx).items():
            out[name] = torch.as_tensor(value)
        return out


def _defers(t: Transform, defer_normalize: bool) -> bool:
    deferred = getattr(t, "deferred", None)
    if deferred is not None:  # the transform decides (large-image crops: unless `lighting` needs the float scale)
        return bool(deferred())
    return defer_normalize and hasattr(t, "crop_uint8")
