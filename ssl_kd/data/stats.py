"""Per-channel normalisation constants (mean, std on the 0..1 scale) of a loaded dataset: explicit in the config, none,
ImageNet's, the source's own (`Source.stats`), or measured on the training images."""

from __future__ import annotations

import numpy as np

from ssl_kd.data.config import DataConfig
from ssl_kd.data.containers import FolderImageSet, ImageSet
from ssl_kd.data.sources.base import Stats

IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def pick_stats(cfg: DataConfig, source_stats: Stats | None, train: ImageSet) -> Stats:
    """What `data.mean/std` and `data.normalize` ask for; `normalize: dataset` without known constants measures
    them on the training images."""
    if cfg.mean is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    if cfg.normalize == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if cfg.normalize == "imagenet":
        return IMAGENET_STATS
    if source_stats is not None:
        return source_stats
    return image_stats(train)


def image_stats(images: ImageSet, max_images: int = 10000) -> Stats:
    """Per-channel mean/std on the 0..1 scale from up to `max_images` evenly spaced images."""
    n = len(images)
    if n == 0:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if isinstance(images, FolderImageSet):
        max_images = min(max_images, 256)  # each one is a file decode
    idx = np.unique(np.linspace(0, n - 1, min(n, max_images)).astype(np.int64))
    if images.images is not None:
        x = np.asarray(images.images[idx], dtype=np.float64).reshape(-1, 3)
    else:
        x = np.concatenate([px for i in idx if (px := _pixels(images, int(i))) is not None]).astype(np.float64)
    mean = x.mean(0) / 255
    std = np.maximum(x.std(0) / 255, 1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _pixels(images: ImageSet, i: int) -> np.ndarray | None:
    """(H*W, 3) pixels of image i; None for an unreadable file (training skips it too)."""
    from ssl_kd.data.image_files import UnreadableImage

    try:
        return np.asarray(images.image(i)).reshape(-1, 3)
    except UnreadableImage:
        return None
