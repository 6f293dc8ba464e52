"""`data.limit_train` / `data.limit_test`: class-balanced subsets chosen by a fixed hash, the same on every machine
and for every seed, so any config can run on a few images (tests) and a smaller limit keeps a subset of a larger."""

from __future__ import annotations

import numpy as np

from ssl_kd.data.config import DataConfig
from ssl_kd.data.containers import ImageSet
from ssl_kd.data.hashing import MASK64, splitmix64_array

_SALT_STEP = 0x632BE59BD9B4E019  # salt s hashes indices ^ (s * this): the unlabelled pool's subset is not the train's


def balanced_subset(targets: np.ndarray, limit: int, salt: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced subset of size min(limit, N), identical on every machine.

    Quotas are filled evenly and a class too small to fill its quota hands the rest to the others. Within a
    class images are ranked by a fixed hash, so a smaller limit always gives a subset of a larger one.
    """
    targets = np.asarray(targets)
    n = len(targets)
    if limit >= n:
        return np.arange(n, dtype=np.int64)
    labels, inverse = np.unique(targets, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(labels))
    quota = np.zeros_like(counts)
    while quota.sum() < limit:
        open_ = np.flatnonzero(quota < counts)
        left = limit - quota.sum()
        share, extra = divmod(left, len(open_))
        add = np.full(len(open_), share)
        add[:extra] += 1
        quota[open_] = np.minimum(quota[open_] + add, counts[open_])
    keys = splitmix64_array(np.arange(n, dtype=np.uint64) ^ np.uint64(salt * _SALT_STEP & MASK64))
    order = np.lexsort((keys, inverse))  # by class, then by hash
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.concatenate([order[s : s + q] for s, q in zip(starts, quota)])
    return np.sort(keep).astype(np.int64)


def limit_splits(
    cfg: DataConfig, train: ImageSet, test: ImageSet, unlabeled: ImageSet | None
) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    """The splits cut to `limit_train` (the unlabelled pool too, with its own salt) and `limit_test`."""
    if cfg.limit_train is not None:
        train = train.subset(balanced_subset(train.targets, cfg.limit_train))
        if unlabeled is not None:
            unlabeled = unlabeled.subset(balanced_subset(unlabeled.targets, cfg.limit_train, salt=1))
    if cfg.limit_test is not None:
        test = test.subset(balanced_subset(test.targets, cfg.limit_test))
    return train, test, unlabeled


def limited(n: int, limit: int | None) -> int:
    """How many of n images a limit keeps (what `limit_splits` gives, without the splits)."""
    return int(min(n, limit) if limit is not None else n)
