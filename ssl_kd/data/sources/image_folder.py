"""A folder of image files, `data.path/train/<class>/*` and `data.path/test/<class>/*` (or `val/`), classes sorted by
folder name as torchvision's ImageFolder. Files are decoded on access (`FolderImageSet`), resized to
`data.image_size`, or to the first training image's size when that is square."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_kd.data.config import DataConfig
from ssl_kd.data.containers import FolderImageSet
from ssl_kd.data.sources.base import Source, SourceInfo, SourceSplits, register_source
from ssl_kd.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
Listing = tuple[list[str], list[int]]  # files, class indices


@register_source("image_folder")
class ImageFolder(Source):
    path_help = "the folder holding train/<class>/ and test/<class>/"

    def load(self, cfg: DataConfig) -> SourceSplits:
        root = Path(cfg.path).expanduser()
        (ftr, ytr), (fte, yte), classes = scan_image_folder(root)
        image_size = cfg.image_size
        if image_size is None:
            h, w = first_image_size(ftr[0])
            if h != w:
                raise UserError(
                    f"data.image_size: the images under {root} are not square ({ftr[0]} is {w}x{h}); "
                    f"set data.image_size to the square size to resize them to."
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
        train, test, classes = scan_image_folder(root)
        return SourceInfo(
            num_train=len(train[0]), num_test=len(test[0]), num_unlabeled=0, num_classes=len(classes),
            image_size=cfg.image_size or first_image_size(train[0][0])[0], source=str(root),
        )  # fmt: skip


def scan_image_folder(root: Path) -> tuple[Listing, Listing, list[str]]:
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
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"data.path: {train_dir} has no class folders (expected {train_dir}/<class>/<images>).")
    index = {c: i for i, c in enumerate(classes)}

    def scan(d: Path) -> Listing:
        files, targets = [], []
        for c in sorted(p.name for p in d.iterdir() if p.is_dir()):
            if c not in index:
                raise UserError(f"data.path: class folder {d / c} has no counterpart in {train_dir}.")
            for f in sorted((d / c).iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                    files.append(str(f))
                    targets.append(index[c])
        if not files:
            raise UserError(f"data.path: no images ({', '.join(IMAGE_EXTENSIONS)}) under {d}/<class>/.")
        return files, targets

    return scan(train_dir), scan(test_dir), classes


def first_image_size(file: str) -> tuple[int, int]:
    """(H, W) of one image file, from its header."""
    from PIL import Image

    with Image.open(file) as im:
        w, h = im.size
    return h, w
