"""scikit-learn's 1,797 8x8 handwritten digits, bundled in its wheel: the default dataset, so a config without a
`data:` block runs anywhere offline. Pixel values 0..16 are scaled to 0..255 and repeated to RGB; the test split
is fixed: per class, the 40 images with the smallest hash (400 test, 1,397 train)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ssl_kd.data.config import DataConfig
from ssl_kd.data.containers import ImageSet
from ssl_kd.data.hashing import splitmix64_array
from ssl_kd.data.sources.base import Source, SourceInfo, SourceSplits, register_source

TEST_PER_CLASS = 40
NUM_IMAGES, NUM_CLASSES, IMAGE_SIZE = 1797, 10, 8
SOURCE = "sklearn.datasets.load_digits (bundled with scikit-learn)"
_SPLIT_SALT = 0xD1617


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    x = np.repeat(x[..., None], 3, axis=3)
    y = d.target.astype(np.int64)
    keys = splitmix64_array(np.arange(len(y), dtype=np.uint64) ^ np.uint64(_SPLIT_SALT))
    order = np.lexsort((keys, y))
    is_test = np.zeros(len(y), bool)
    for c in range(NUM_CLASSES):
        is_test[order[y[order] == c][:TEST_PER_CLASS]] = True
    for a in (x, y):
        a.flags.writeable = False
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


@register_source("digits")
class Digits(Source):
    def load(self, cfg: DataConfig) -> SourceSplits:
        xtr, ytr, xte, yte = _arrays()
        classes = [str(i) for i in range(NUM_CLASSES)]
        return SourceSplits(
            train=ImageSet(xtr, ytr, classes), test=ImageSet(xte, yte, classes), num_classes=NUM_CLASSES,
            classes=classes, source=SOURCE,
        )  # fmt: skip

    def info(self, cfg: DataConfig) -> SourceInfo:
        n_test = NUM_CLASSES * TEST_PER_CLASS
        return SourceInfo(
            num_train=NUM_IMAGES - n_test, num_test=n_test, num_unlabeled=0, num_classes=NUM_CLASSES,
            image_size=IMAGE_SIZE, source=SOURCE,
        )  # fmt: skip
