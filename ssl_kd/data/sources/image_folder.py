"""A folder of image files, `data.path/train/<class>/*` and `data.path/test/<class>/*` (or `val/`), classes sorted by
folder name as torchvision's ImageFolder. The listing is cached (`folder_index.py`). Without `data.transform` files
are decoded on access and resized whole (`FolderImageSet`) to `data.image_size`, or to the first training image's
size when that is square; with it they stay encoded (`EncodedImageSet`) and the large-image transforms crop them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_kd.data.config import DataConfig
from ssl_kd.data.containers import EncodedImageSet, FolderImageSet
from ssl_kd.data.sources.base import Source, SourceInfo, SourceSplits, register_source
from ssl_kd.data.sources.folder_index import IMAGE_EXTENSIONS, Listing, class_dirs, list_split
from ssl_kd.errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "first_image_size", "folder_splits", "scan_image_folder"]


@register_source("image_folder")
class ImageFolder(Source):
    path_help = "the folder holding train/<class>/ and test/<class>/ (or val/<class>/)"

    def load(self, cfg: DataConfig) -> SourceSplits:
        root = Path(cfg.path).expanduser()
        (ftr, ytr), (fte, yte), classes = scan_image_folder(root, cfg.index_cache)
        if cfg.transform is not None:
            return folder_splits(cfg, root, (ftr, ytr), (fte, yte), classes)
        image_size = cfg.image_size
        if image_size is None:
            h, w = first_image_size(ftr[0])
            if h != w:
                raise UserError(
                    f"data.image_size: the images under {root} are not square ({ftr[0]} is {w}x{h}); "
                    f"set data.image_size to the square size to resize them to, or set data.transform "
                    f"(random / centre crops of large images)."
                )
            image_size = h
        size = (image_size, image_size)
        return SourceSplits(
            train=FolderImageSet(ftr, np.array(ytr), size, classes),
            test=FolderImageSet(fte, np.array(yte), size, classes),
            num_classes=len(classes), classes=classes, source=str(root),
        )  # fmt: skip

    def info(self, cfg: DataConfig) -> SourceInfo:
        root = Path(cfg.path).expanduser()
        train, test, classes = scan_image_folder(root, cfg.index_cache)
        size = cfg.transform.out_size(cfg.image_size) if cfg.transform is not None else cfg.image_size
        return SourceInfo(
            num_train=len(train[0]), num_test=len(test[0]), num_unlabeled=0, num_classes=len(classes),
            image_size=size or first_image_size(train[0][0])[0], source=str(root),
        )  # fmt: skip


def folder_splits(cfg: DataConfig, root: Path, train: Listing, test: Listing, classes: list[str]) -> SourceSplits:
    """Encoded train / test sets for the large-image transforms (output size `data.transform.size`)."""
    from ssl_kd.data.config import TransformConfig

    t = cfg.transform or TransformConfig()
    side = t.out_size(cfg.image_size)
    return SourceSplits(
        train=EncodedImageSet(train[0], np.array(train[1]), (side, side), classes, strict=t.strict),
        test=EncodedImageSet(test[0], np.array(test[1]), (side, side), classes, strict=t.strict),
        num_classes=len(classes), classes=classes, source=str(root),
    )  # fmt: skip


def scan_image_folder(root: Path, use_cache: bool = True) -> tuple[Listing, Listing, list[str]]:
    """(train listing, test listing, class names), or one UserError saying what the layout must be."""
    if not root.is_dir():
        raise UserError(
            f"data.path: no such folder {root} (expected {root}/train/<class>/* and {root}/test/<class>/*)."
        )
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise UserError(
            f"data.path: {root} must hold train/<class>/<images> and test/<class>/<images> (or val/ "
            f"instead of test/); found {sorted(p.name for p in root.iterdir())}."
        )
    classes = class_dirs(train_dir)
    if not classes:
        raise UserError(f"data.path: {train_dir} has no class folders (expected {train_dir}/<class>/<images>).")
    return list_split(train_dir, classes, use_cache), list_split(test_dir, classes, use_cache), classes


def first_image_size(file: str) -> tuple[int, int]:
    """(H, W) of one image file, from its header."""
    from PIL import Image

    with Image.open(file) as im:
        w, h = im.size
    return h, w
