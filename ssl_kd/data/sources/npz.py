"""`.npz` datasets: any file (`dataset: npz`, `data.path`) and the named ones that exist only as `<root>/<name>.npz`.
Arrays: x_train, y_train, x_test, y_test (uint8 images N x H x W x 3 or N x H x W, integer labels), optional
x_unlabeled / y_unlabeled, label_names, and metadata keys (lat_/lon_/date_<split>, see `ssl_kd.data.metadata`).
Large files are read through the decode cache (`npz_cache.py`); `info` reads array headers only.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssl_kd.data.config import DEFAULT_DATA_ROOT, DataConfig
from ssl_kd.data.containers import ImageSet
from ssl_kd.data.sources.base import Source, SourceInfo, SourceSplits, register_source
from ssl_kd.data.sources.npz_cache import cache_dir_for, decoded_npz
from ssl_kd.errors import UserError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@register_source("npz")
class NpzFile(Source):
    """Any .npz file at `data.path`."""

    path_help = "the .npz file"

    def load(self, cfg: DataConfig) -> SourceSplits:
        return load_npz(Path(cfg.path).expanduser(), "data.path")

    def info(self, cfg: DataConfig) -> SourceInfo:
        return npz_info(Path(cfg.path).expanduser(), "data.path")


class NamedNpz(Source):
    """A dataset that exists only as `<data root>/<name>.npz` (no torchvision files, no download)."""

    description = ""  # what the file holds, for the not-found error

    def file(self, cfg: DataConfig) -> Path:
        path = cfg.data_root() / f"{self.name}.npz"
        if not path.is_file():
            raise UserError(
                f"data.dataset={self.name}: {path} not found. This dataset is {self.description}; set data.root "
                f"to the folder holding {self.name}.npz (data.root if set, else $SSL_KD_DATA, else "
                f"{DEFAULT_DATA_ROOT})."
            )
        return path

    def load(self, cfg: DataConfig) -> SourceSplits:
        return load_npz(self.file(cfg), f"data.root ({self.name})")

    def info(self, cfg: DataConfig) -> SourceInfo:
        return npz_info(self.file(cfg), f"data.root ({self.name})")


@register_source("ucsc_plants32")
class UcscPlants32(NamedNpz):
    description = "the project's iNaturalist plant photos (32 px) with observation dates"


def load_npz(path: Path, where: str) -> SourceSplits:
    """The splits of an .npz; `where` names the config key that pointed to it, in errors."""
    if not path.is_file():
        raise UserError(f"{where}: no such file {path} (an .npz with x_train, y_train, x_test, y_test).")
    try:
        arrays = decoded_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{where}: cannot read {path} as an .npz file ({e}).") from None
    _check_npz_keys(list(arrays), path, where)
    _check_npz_arrays({k: (a.shape, a.dtype) for k, a in arrays.items()}, path, where)
    for k in ("x_train", "x_test", "x_unlabeled"):
        if k in arrays and arrays[k].dtype != np.uint8:
            raise UserError(f"{where}: {path}:{k} has dtype {arrays[k].dtype}; images must be uint8 (0..255).")
    sets = {}
    for split in ("train", "test", "unlabeled"):
        if f"x_{split}" not in arrays:
            continue
        x = arrays[f"x_{split}"]
        y = arrays.get(f"y_{split}")
        y = np.full(len(x), -1, np.int64) if y is None else np.asarray(y, dtype=np.int64)
        s = ImageSet(np.asarray(x), y)
        if isinstance(x, np.memmap) and x.ndim == 4 and x.shape[-1] == 3:
            s._mmap_file = str(x.filename)
        sets[split] = s
    names = arrays.get("label_names")
    classes = [str(v) for v in np.asarray(names)] if names is not None else None
    num_classes = len(classes) if classes else int(max(sets["train"].targets.max(), sets["test"].targets.max()) + 1)
    for s in sets.values():
        s.classes = classes
    return SourceSplits(
        **sets, num_classes=num_classes, classes=classes, source=str(path.absolute()), arrays=arrays
    )  # fmt: skip


def npz_info(path: Path, where: str) -> SourceInfo:
    """Sizes from the array headers only (and the labels, for the class count)."""
    if not path.is_file():
        raise UserError(f"{where}: no such file {path} (an .npz with x_train, y_train, x_test, y_test).")
    cache, _ = cache_dir_for(path)
    try:
        if (cache / "meta.json").is_file():
            names = json.loads((cache / "meta.json").read_text())["arrays"]
            arrays = {k: np.load(cache / f"{k}.npy", mmap_mode="r") for k in names}
            headers = {k: (a.shape, a.dtype) for k, a in arrays.items()}
            small = lambda k: np.asarray(arrays[k])  # noqa: E731
        else:
            zf = zipfile.ZipFile(path)
            headers = {}
            for member in zf.namelist():
                with zf.open(member) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                    headers[member.removesuffix(".npy")] = (shape, dtype)

            def small(k: str) -> np.ndarray:
                with zf.open(f"{k}.npy") as f:
                    return np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{where}: cannot read {path} as an .npz file ({e}).") from None
    shapes = {k: s for k, (s, _) in headers.items()}
    _check_npz_keys(list(shapes), path, where)
    _check_npz_arrays(headers, path, where)
    try:
        labels = {k: small(k) for k in ("y_train", "y_test")}
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: cannot read the labels of {path} ({e}).") from None
    for k, y in labels.items():
        if len(y) and y.min() < 0:
            raise UserError(f"{where}: {path}:{k} holds negative labels (min {y.min()}); labels are 0..C-1.")
    if "label_names" in shapes:
        classes = int(shapes["label_names"][0])
    else:
        classes = int(max((y.max() for y in labels.values() if len(y)), default=0) + 1)
    unl = shapes["x_unlabeled"][0] if "x_unlabeled" in shapes else 0
    return SourceInfo(
        num_train=shapes["x_train"][0], num_test=shapes["x_test"][0], num_unlabeled=unl, num_classes=classes,
        image_size=shapes["x_train"][1], source=str(path.absolute()),
    )  # fmt: skip


def _check_npz_keys(keys: Sequence[str], path: Path, where: str) -> None:
    missing = [k for k in NPZ_KEYS if k not in keys]
    if missing:
        raise UserError(
            f"{where}: {path} lacks array(s) {', '.join(missing)}; an .npz dataset needs x_train, "
            f"y_train, x_test, y_test (uint8 images N x H x W x 3 or N x H x W, integer labels); "
            f"it has {sorted(keys)}."
        )


def _check_npz_arrays(headers: dict[str, tuple[tuple[int, ...], np.dtype]], path: Path, where: str) -> None:
    """Shapes and dtypes from the array headers, before anything is loaded: one clear line per problem."""
    image = None
    for split in ("train", "test", "unlabeled"):
        x, y = f"x_{split}", f"y_{split}"
        if x not in headers:
            continue
        shape, dtype = headers[x]
        ok = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))
        if not ok or dtype != np.uint8:
            raise UserError(
                f"{where}: {path}:{x} has shape {tuple(shape)} and dtype {dtype}; images must be uint8 (0..255) "
                f"of shape N x H x W x 3 (or N x H x W, N x H x W x 1)."
            )
        if image is not None and tuple(shape[1:3]) != image:
            h, w = image
            raise UserError(f"{where}: {path}:{x} images are {shape[1]}x{shape[2]}, x_train's are {h}x{w}.")
        image = image or tuple(shape[1:3])
        if y in headers:
            yshape, ydtype = headers[y]
            if len(yshape) != 1 or yshape[0] != shape[0] or not np.issubdtype(ydtype, np.integer):
                raise UserError(
                    f"{where}: {path}:{y} has shape {tuple(yshape)} and dtype {ydtype}; labels must be one integer "
                    f"per image of {x} (shape ({shape[0]},))."
                )
    if "label_names" in headers and len(headers["label_names"][0]) != 1:
        raise UserError(f"{where}: {path}:label_names must be 1-D (one name per class).")
