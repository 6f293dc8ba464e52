"""The loaded dataset of a `data:` block: its source's splits (`sources/`), then the steps every source shares, in
this order: metadata (`meta_attach.py`), DM-KD's `train_source`, resizing to `image_size`, normalisation constants
(`stats.py`), `limit_train` / `limit_test` (`subsets.py`)."""

from __future__ import annotations

from typing import Any

from ssl_kd.data.config import DataConfig
from ssl_kd.data.containers import DatasetBundle, EncodedImageSet, FolderImageSet, resize_set
from ssl_kd.data.meta_attach import attach_metadata
from ssl_kd.data.sources import get_source
from ssl_kd.data.sources.synthetic import load_train_source, train_source_info
from ssl_kd.data.stats import pick_stats
from ssl_kd.data.subsets import limit_splits, limited


def load_dataset(cfg: DataConfig) -> DatasetBundle:
    """Load the configured dataset, apply `image_size` / limits, and pick normalization constants."""
    name = cfg.dataset
    source = get_source(name)
    raw = source.load(cfg)
    meta_info = attach_metadata(cfg, raw)
    train, test, unlabeled, where = raw.train, raw.test, raw.unlabeled, raw.source
    if cfg.train_source is not None:  # e.g. DM-KD's synthetic images; the real test split stays
        size = cfg.image_size or int(test.image_shape[0])
        train, unlabeled = load_train_source(cfg, raw.num_classes, raw.classes, size), None
        where = f"train: {cfg.train_source_path()}; test: {where}"

    if cfg.image_size is not None and not isinstance(train, FolderImageSet):
        size = (cfg.image_size, cfg.image_size)
        train, test = resize_set(train, size), resize_set(test, size)
        unlabeled = resize_set(unlabeled, size) if unlabeled is not None else None

    mean, std = pick_stats(cfg, source.stats, train)
    train, test, unlabeled = limit_splits(cfg, train, test, unlabeled)
    h, _ = train.image_shape
    transform = cfg.transform
    if transform is None and source.default_transform:
        from ssl_kd.data.config import TransformConfig

        transform = TransformConfig()
    if transform is not None and not isinstance(train, EncodedImageSet) and not isinstance(test, EncodedImageSet):
        transform = None  # no split holds image files (the crops also take arrays, e.g. a train_source's)
    info = {
        "dataset": name, "source": where, "num_train": len(train), "num_test": len(test),
        "num_unlabeled": len(unlabeled) if unlabeled is not None else 0, "num_classes": raw.num_classes,
        "image_size": int(h),
    }  # fmt: skip
    if meta_info:
        info["metadata"] = meta_info
    return DatasetBundle(
        name=name, train=train, test=test, num_classes=raw.num_classes, image_size=int(h), mean=mean, std=std,
        unlabeled=unlabeled, classes=raw.classes, source=where, info=info, transform=transform,
    )  # fmt: skip


def dataset_info(cfg: DataConfig) -> dict[str, Any]:
    """Sizes, classes, image size and location without decoding images (for --dry-run).

    Raises the same UserError as `load_dataset` when the data is missing. With `metadata:` the metadata is read
    and checked too (bad dates or coordinates are found before a run folder is written).
    """
    source = get_source(cfg.dataset)
    if cfg.metadata is not None:
        load_dataset(cfg)
    info = source.info(cfg)
    n_train, n_unlabeled, where = info.num_train, info.num_unlabeled, info.source
    if cfg.train_source is not None:
        extra = train_source_info(cfg, int(info.num_classes))
        n_train, n_unlabeled, where = extra["num_train"], 0, f"{extra['train_source']}; test: {where}"
    return {
        "dataset": cfg.dataset, "source": where, "num_train": limited(n_train, cfg.limit_train),
        "num_test": limited(info.num_test, cfg.limit_test), "num_unlabeled": limited(n_unlabeled, cfg.limit_train),
        "num_train_available": int(n_train), "num_test_available": int(info.num_test),
        "num_classes": int(info.num_classes), "image_size": int(cfg.image_size or info.image_size),
        "normalize": "explicit" if cfg.mean else cfg.normalize,
    }  # fmt: skip
