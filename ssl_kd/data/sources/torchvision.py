"""The torchvision datasets (CIFAR-10/100, SVHN, STL-10): under the data root as torchvision's own files, else as
one `<root>/<name>.npz` with the same arrays as `dataset: npz`, else downloaded by torchvision when
`data.download: true`. Each class below holds one dataset's facts: torchvision's class and file layout, split
sizes, classes, image size and normalisation constants.

`normalize: dataset` constants are TorchSSL's (TorchSSL/TorchSSL@f26e1d4, datasets/ssl_dataset.py), which FullMatch
uses too; USB normalises CIFAR-10 with the ImageNet constants instead (`normalize: imagenet`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_kd.data.config import DEFAULT_DATA_ROOT, DataConfig
from ssl_kd.data.containers import ImageSet
from ssl_kd.data.sources.base import Source, SourceInfo, SourceSplits, register_source
from ssl_kd.data.sources.npz import load_npz, npz_info
from ssl_kd.errors import UserError


def _per255(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(v / 255 for v in mean), tuple(v / 255 for v in std)


class TorchvisionSource(Source):
    """One torchvision dataset. Subclasses set the facts; `unlabeled_split` names the split used as the unlabelled
    pool (None: none)."""

    tv_class = ""  # the class in torchvision.datasets
    folder: str | None = None  # torchvision's folder under the root (None: the files sit in the root)
    archive: str | None = None  # what to extract there, named in the not-found error
    files: tuple[str, ...] = ()  # the files that must all exist
    sizes = (0, 0, 0)  # train, test, unlabelled images (the dry run reports these without reading)
    num_classes = 0
    image_size = 0
    nchw = False  # torchvision keeps SVHN's and STL-10's arrays as N x C x H x W
    train_flag = False  # the constructor takes train=bool (CIFAR) instead of split=str

    def unlabeled_split(self, cfg: DataConfig) -> str | None:
        return None

    def needed_files(self, cfg: DataConfig) -> list[str]:
        return list(self.files)

    def npz_unlabeled(self, cfg: DataConfig) -> bool:
        """Whether the npz stand-in's x_unlabeled is kept."""
        return True

    # ------------------------------------------------------------ where the data is
    def find(self, cfg: DataConfig) -> tuple[Path, str]:
        """('torchvision' | 'npz' | 'download', path), or the UserError saying where to put the files."""
        root = cfg.data_root()
        tv_dir = root / self.folder if self.folder else root
        needed = self.needed_files(cfg)
        if all((tv_dir / f).is_file() for f in needed):
            return tv_dir, "torchvision"
        npz = root / f"{self.name}.npz"
        if npz.is_file():
            return npz, "npz"
        if cfg.download:
            return root, "download"
        archive = f" (extract {self.archive} there)" if self.archive else ""
        raise UserError(
            f"data.dataset={self.name}: not found under data root {root}. Put either\n"
            f"  (a) torchvision's files in {tv_dir}/: {', '.join(needed)}{archive}, or\n"
            f"  (b) one file {npz} holding arrays x_train, y_train, x_test, y_test (uint8 images N x H x W x 3, "
            f"integer labels),\n"
            f"or set data.download=true to fetch it with torchvision. The root is data.root if set, else "
            f"$SSL_KD_DATA, else {DEFAULT_DATA_ROOT}."
        )

    def info(self, cfg: DataConfig) -> SourceInfo:
        where, kind = self.find(cfg)
        if kind == "npz":
            info = npz_info(where, f"data.root ({self.name})")
            if not self.npz_unlabeled(cfg):
                info.num_unlabeled = 0
            return info
        n_train, n_test, n_unlabeled = self.sizes
        source = f"{where} (will download via torchvision)" if kind == "download" else str(where)
        return SourceInfo(
            num_train=n_train, num_test=n_test, num_unlabeled=n_unlabeled if self.unlabeled_split(cfg) else 0,
            num_classes=self.num_classes, image_size=self.image_size, source=source,
        )  # fmt: skip

    # ------------------------------------------------------------ reading
    def load(self, cfg: DataConfig) -> SourceSplits:
        where, kind = self.find(cfg)
        if kind == "npz":
            splits = load_npz(where, f"data.root ({self.name})")
            if not self.npz_unlabeled(cfg):
                splits.unlabeled = None
            return splits
        try:
            import torchvision.datasets as tvd
        except ImportError as e:  # pragma: no cover
            raise UserError(f"data.dataset={self.name}: torchvision is needed to read its files ({e}).") from None
        root, download = str(cfg.data_root()), kind == "download"
        cls = getattr(tvd, self.tv_class)

        def read(split: str) -> ImageSet:
            try:
                kw = {"train": split == "train"} if self.train_flag else {"split": split}
                ds = cls(root, download=download, **kw)
            except Exception as e:  # torchvision raises RuntimeError/URLError/... for bad or missing files
                verb = "download" if download else "read"
                raise UserError(
                    f"data.dataset={self.name}: could not {verb} the {split} split under {root}: {e}"
                ) from None
            x = np.asarray(ds.data)
            if self.nchw:
                x = x.transpose(0, 2, 3, 1)
            y = np.asarray(ds.targets if hasattr(ds, "targets") else ds.labels, dtype=np.int64)
            return ImageSet(np.ascontiguousarray(x), y, list(getattr(ds, "classes", [])) or None)

        train, test = read("train"), read("test")
        unlabeled_split = self.unlabeled_split(cfg)
        return SourceSplits(
            train=train, test=test, num_classes=self.num_classes, classes=train.classes,
            unlabeled=read(unlabeled_split) if unlabeled_split else None,
            source=f"{root} (downloaded by torchvision)" if download else str(where),
        )  # fmt: skip


@register_source("cifar10")
class CIFAR10(TorchvisionSource):
    tv_class, folder, archive = "CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz"
    files = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    sizes, num_classes, image_size, train_flag = (50000, 10000, 0), 10, 32, True
    stats = _per255((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))


@register_source("cifar100")
class CIFAR100(TorchvisionSource):
    tv_class, folder, archive = "CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz"
    files = ("train", "test", "meta")
    sizes, num_classes, image_size, train_flag = (50000, 10000, 0), 100, 32, True
    stats = _per255((129.3, 124.1, 112.4), (68.2, 65.4, 70.4))


@register_source("svhn")
class SVHN(TorchvisionSource):
    """The 531k `extra` split is the unlabelled pool only with `data.extra_unlabeled` (TorchSSL / USB use it)."""

    tv_class, files = "SVHN", ("train_32x32.mat", "test_32x32.mat")
    sizes, num_classes, image_size, nchw = (73257, 26032, 531131), 10, 32, True
    stats = ((0.4380, 0.4440, 0.4730), (0.1751, 0.1771, 0.1744))

    def unlabeled_split(self, cfg: DataConfig) -> str | None:
        return "extra" if cfg.extra_unlabeled else None

    def needed_files(self, cfg: DataConfig) -> list[str]:
        return [*self.files, "extra_32x32.mat"] if cfg.extra_unlabeled else list(self.files)

    def npz_unlabeled(self, cfg: DataConfig) -> bool:
        return cfg.extra_unlabeled


@register_source("stl10")
class STL10(TorchvisionSource):
    """96 px; the 100k `unlabeled` split is the unlabelled pool."""

    tv_class, folder, archive = "STL10", "stl10_binary", "stl10_binary.tar.gz"
    files = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin", "class_names.txt")
    sizes, num_classes, image_size, nchw = (5000, 8000, 100000), 10, 96, True
    stats = _per255((112.4, 109.1, 98.6), (68.4, 66.6, 68.5))

    def unlabeled_split(self, cfg: DataConfig) -> str | None:
        return "unlabeled"
