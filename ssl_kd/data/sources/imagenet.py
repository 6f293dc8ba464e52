"""`dataset: imagenet`: ILSVRC2012 as extracted files under `data.path` (default `<data.root>/imagenet`):
`train/<wnid>/*.JPEG` and the validation images either sorted into `val/<wnid>/` (the usual prepared layout) or flat
in `val/` (ILSVRC2012_val_00000001.JPEG ...), labelled then by the devkit: torchvision's `meta.bin` in the folder, or
`ILSVRC2012_devkit_t12.tar.gz` there, parsed once by `torchvision.datasets.imagenet.parse_devkit_archive` (its
`meta.bin` goes into the index cache folder). Classes are the wnids sorted, as torchvision's ImageNet /
ImageFolder order them. Images go through the large-image transforms (`data.transform`, defaults when unset:
RandomResizedCrop 224 / resize 256 + centre crop 224); normalisation constants are ImageNet's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssl_kd.data.config import DataConfig, TransformConfig
from ssl_kd.data.sources.base import Source, SourceInfo, SourceSplits, register_source
from ssl_kd.data.sources.folder_index import IMAGE_EXTENSIONS, Listing, class_dirs, list_split
from ssl_kd.data.sources.image_folder import folder_splits
from ssl_kd.errors import UserError

DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
META = "meta.bin"


@register_source("imagenet")
class ImageNet(Source):
    stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    default_transform = True  # whole-image squares make no sense at this scale

    def root(self, cfg: DataConfig) -> Path:
        return Path(cfg.path).expanduser() if cfg.path else cfg.data_root() / "imagenet"

    def listings(self, cfg: DataConfig) -> tuple[Listing, Listing, list[str]]:
        root = self.root(cfg)
        train_dir, val_dir = root / "train", root / "val"
        if not train_dir.is_dir() or not val_dir.is_dir():
            raise UserError(
                f"data.path: {root} must hold ILSVRC2012's train/<wnid>/*.JPEG and val/ (val/<wnid>/*.JPEG, or the "
                f"50,000 flat val images with {DEVKIT} beside them); "
                f"found {sorted(p.name for p in root.iterdir()) if root.is_dir() else 'no such folder'}."
            )
        classes = class_dirs(train_dir)
        if not classes:
            raise UserError(f"data.path: {train_dir} has no class folders (expected {train_dir}/<wnid>/*.JPEG).")
        train = list_split(train_dir, classes, cfg.index_cache)
        if class_dirs(val_dir):
            return train, list_split(val_dir, classes, cfg.index_cache), classes
        return train, flat_val(root, val_dir, classes), classes

    def load(self, cfg: DataConfig) -> SourceSplits:
        train, test, classes = self.listings(cfg)
        return folder_splits(cfg, self.root(cfg), train, test, classes)

    def info(self, cfg: DataConfig) -> SourceInfo:
        train, test, classes = self.listings(cfg)
        return SourceInfo(
            num_train=len(train[0]), num_test=len(test[0]), num_unlabeled=0, num_classes=len(classes),
            image_size=(cfg.transform or TransformConfig()).out_size(cfg.image_size), source=str(self.root(cfg)),
        )  # fmt: skip


def flat_val(root: Path, val_dir: Path, classes: list[str]) -> Listing:
    """The flat val/ images labelled by the devkit's ground truth (file i, sorted by name, has val_wnids[i])."""
    from torchvision.datasets.imagenet import load_meta_file, parse_devkit_archive

    files = sorted(f for f in os.listdir(val_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    cache = Path(os.environ.get("SSL_KD_CACHE", "~/.cache/ssl_kd")).expanduser() / "imagenet_meta"
    meta_dir = next((d for d in (root, cache) if (d / META).is_file()), None)
    if meta_dir is None:
        if not (root / DEVKIT).is_file():
            raise UserError(
                f"data.path: {val_dir} holds the validation images without class folders; their labels come from "
                f"the devkit: put {DEVKIT} (or torchvision's {META}) in {root}, or sort val/ into val/<wnid>/."
            )
        cache.mkdir(parents=True, exist_ok=True)
        try:
            parse_devkit_archive(str(cache), str(root / DEVKIT))
        except Exception as e:  # a damaged archive: torchvision raises RuntimeError / tarfile / scipy errors
            raise UserError(f"data.path: {root / DEVKIT} could not be read as the ILSVRC2012 devkit ({e}).") from None
        meta_dir = cache
    _, val_wnids = load_meta_file(str(meta_dir))
    if len(val_wnids) != len(files):
        raise UserError(
            f"data.path: {val_dir} holds {len(files)} images but the devkit labels {len(val_wnids)}; "
            f"the flat layout needs all of ILSVRC2012_img_val.tar extracted there."
        )
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(val_wnids) - set(index))
    if missing:
        raise UserError(f"data.path: the devkit's val classes {missing[:3]}... have no train/<wnid>/ folder.")
    return [str(val_dir / f) for f in files], list(np.array([index[w] for w in val_wnids], dtype=np.int64))
