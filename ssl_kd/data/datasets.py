"""Dataset sources: where to find each dataset, how to load it into `ImageSet`s (containers.py), and its
normalization constants. Named datasets (torchvision's files or `<root>/<name>.npz`), any `.npz` (decoded once
into a memory-mapped cache), image folders, and the `digits` set that ships with scikit-learn.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ssl_kd.data.config import DEFAULT_DATA_ROOT, DataConfig
from ssl_kd.data.containers import DatasetBundle, FolderImageSet, ImageSet
from ssl_kd.data.metadata import (
    RawMetadata,
    load_inat,
    meta_dim,
    npz_metadata,
    read_metadata_csv,
    synthetic_locations,
)
from ssl_kd.errors import UserError

# Per-channel mean/std on the 0..1 scale (specs/ssl.md §3.5). CIFAR-10 uses TorchSSL/FullMatch's numbers;
# USB uses the ImageNet constants for CIFAR-10 (`normalize: imagenet`).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (tuple(v / 255 for v in (125.3, 123.0, 113.9)), tuple(v / 255 for v in (63.0, 62.1, 66.7))),
    "cifar100": (tuple(v / 255 for v in (129.3, 124.1, 112.4)), tuple(v / 255 for v in (68.2, 65.4, 70.4))),
    "svhn": ((0.4380, 0.4440, 0.4730), (0.1751, 0.1771, 0.1744)),
    "stl10": (tuple(v / 255 for v in (112.4, 109.1, 98.6)), tuple(v / 255 for v in (68.4, 66.6, 68.5))),
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DIGITS_TEST_PER_CLASS = 40  # 400 test / 1,397 train
DIGITS_SOURCE = "sklearn.datasets.load_digits (bundled with scikit-learn)"

# torchvision's on-disk layout per named dataset: (folder or None, files, sizes, classes, image size).
_TV: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        cls="CIFAR10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        files=[*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"],
        sizes=(50000, 10000, 0), classes=10, image_size=32,
    ),
    "cifar100": dict(
        cls="CIFAR100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
        files=["train", "test", "meta"], sizes=(50000, 10000, 0), classes=100, image_size=32,
    ),
    "svhn": dict(
        cls="SVHN", folder=None, archive=None, files=["train_32x32.mat", "test_32x32.mat"],
        extra_files=["extra_32x32.mat"], sizes=(73257, 26032, 531131), classes=10, image_size=32,
    ),
    "stl10": dict(
        cls="STL10", folder="stl10_binary", archive="stl10_binary.tar.gz",
        files=["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin", "class_names.txt"],  # noqa: E501
        sizes=(5000, 8000, 100000), classes=10, image_size=96,
    ),
}  # fmt: skip

# Named datasets that exist only as `<root>/<name>.npz` (no torchvision files, no download).
NPZ_ONLY = {"ucsc_plants32": "the shared iNaturalist plant photos with dates (../shared/data/ucsc_plants32.npz)"}
INAT_IMAGE_SIZE = 224

_CACHE_MIN_BYTES = 16 << 20  # smaller .npz files decode fast enough that caching them is not worth the disk


# ---------------------------------------------------------------- public loaders
def load_dataset(cfg: DataConfig) -> DatasetBundle:
    """Load the configured dataset, apply `image_size` / limits, and pick normalization constants."""
    name = cfg.dataset
    if name == "digits":
        raw = _load_digits()
    elif name == "npz":
        raw = _load_npz(Path(cfg.path).expanduser(), "data.path")
    elif name == "image_folder":
        raw = _load_image_folder(Path(cfg.path).expanduser(), cfg.image_size)
    elif name in NPZ_ONLY:
        raw = _load_npz(_npz_only_path(cfg), f"data.root ({name})")
    elif name == "inat":
        raw = _load_inat(cfg)
    else:
        raw = _load_named(cfg)
    meta_info = _attach_metadata(cfg, raw)
    train, test, unlabeled = raw["train"], raw["test"], raw.get("unlabeled")
    if cfg.train_source is not None:  # e.g. DM-KD's synthetic images; the real test split stays
        from ssl_kd.data.synthetic import load_train_source

        size = cfg.image_size or int(test.image_shape[0])
        train, unlabeled = load_train_source(cfg, raw["num_classes"], raw.get("classes"), size), None
        raw["source"] = f"train: {cfg.train_source_path()}; test: {raw['source']}"

    if cfg.image_size is not None and not isinstance(train, FolderImageSet):
        size = (cfg.image_size, cfg.image_size)
        train, test = _resize_set(train, size), _resize_set(test, size)
        unlabeled = _resize_set(unlabeled, size) if unlabeled is not None else None

    mean, std = _pick_stats(cfg, name, train)
    if cfg.limit_train is not None:
        train = train.subset(balanced_subset(train.targets, cfg.limit_train))
        if unlabeled is not None:
            unlabeled = unlabeled.subset(balanced_subset(unlabeled.targets, cfg.limit_train, salt=1))
    if cfg.limit_test is not None:
        test = test.subset(balanced_subset(test.targets, cfg.limit_test))

    num_classes = raw["num_classes"]
    h, w = train.image_shape
    info = {
        "dataset": name, "source": raw["source"], "num_train": len(train), "num_test": len(test),
        "num_unlabeled": len(unlabeled) if unlabeled is not None else 0, "num_classes": num_classes,
        "image_size": int(h),
    }  # fmt: skip
    if meta_info:
        info["metadata"] = meta_info
    return DatasetBundle(
        name=name, train=train, test=test, num_classes=num_classes, image_size=int(h), mean=mean, std=std,
        unlabeled=unlabeled, classes=raw.get("classes"), source=raw["source"], info=info,
    )  # fmt: skip


def dataset_info(cfg: DataConfig) -> dict[str, Any]:
    """Sizes, classes, image size and location without decoding images (for --dry-run).

    Raises the same UserError as `load_dataset` when the data is missing. With `metadata:` the metadata is read
    and checked too (bad dates or coordinates are found before a run folder is written).
    """
    name = cfg.dataset
    if cfg.metadata is not None:
        load_dataset(cfg)
    if name == "digits":
        n_tr, n_te, unl, classes, size = (
            1797 - 10 * DIGITS_TEST_PER_CLASS,
            10 * DIGITS_TEST_PER_CLASS,
            0,
            10,
            8,
        )
        source = DIGITS_SOURCE
    elif name == "npz":
        n_tr, n_te, unl, classes, size, source = _npz_info(Path(cfg.path).expanduser(), "data.path")
    elif name == "image_folder":
        root = Path(cfg.path).expanduser()
        tr, te, cls = _scan_image_folder(root)
        n_tr, n_te, unl, classes, source = len(tr[0]), len(te[0]), 0, len(cls), str(root)
        size = cfg.image_size or _first_image_size(tr[0][0])[0]
    elif name in NPZ_ONLY:
        n_tr, n_te, unl, classes, size, source = _npz_info(_npz_only_path(cfg), f"data.root ({name})")
    elif name == "inat":
        raw = _load_inat(cfg)
        n_tr, n_te, unl, classes, source = len(raw["train"]), len(raw["test"]), 0, raw["num_classes"], raw["source"]
        size = cfg.image_size or INAT_IMAGE_SIZE
    else:
        where, kind = _find_named(cfg)
        if kind == "npz":
            n_tr, n_te, unl, classes, size, source = _npz_info(where, f"data.root ({name})")
        else:
            spec = _TV[name]
            (n_tr, n_te, unl), classes, size = spec["sizes"], spec["classes"], spec["image_size"]
            source = f"{where} (will download via torchvision)" if kind == "download" else str(where)
        if name == "svhn" and not cfg.extra_unlabeled:
            unl = 0

    if cfg.train_source is not None:
        from ssl_kd.data.synthetic import train_source_info

        extra = train_source_info(cfg, int(classes))
        n_tr, unl, source = extra["num_train"], 0, f"{extra['train_source']}; test: {source}"

    def lim(n: int, k: int | None) -> int:
        return int(min(n, k) if k is not None else n)

    return {
        "dataset": name, "source": source, "num_train": lim(n_tr, cfg.limit_train),
        "num_test": lim(n_te, cfg.limit_test), "num_unlabeled": lim(unl, cfg.limit_train),
        "num_train_available": int(n_tr), "num_test_available": int(n_te), "num_classes": int(classes),
        "image_size": int(cfg.image_size or size), "normalize": "explicit" if cfg.mean else cfg.normalize,
    }  # fmt: skip


# ---------------------------------------------------------------- subsets and stats
def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash: a version-independent source of 'random' keys (numpy streams may change)."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


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
    with np.errstate(over="ignore"):
        keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ np.uint64(salt * 0x632BE59BD9B4E019 & (2**64 - 1)))
    order = np.lexsort((keys, inverse))  # by class, then by hash
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.concatenate([order[s : s + q] for s, q in zip(starts, quota)])
    return np.sort(keep).astype(np.int64)


def _pick_stats(cfg: DataConfig, name: str, train: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.mean is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    if cfg.normalize == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if cfg.normalize == "imagenet":
        return IMAGENET_STATS
    if name in DATASET_STATS:
        return DATASET_STATS[name]
    return image_stats(train)


def image_stats(images: ImageSet, max_images: int = 10000) -> tuple[tuple[float, ...], tuple[float, ...]]:
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
        x = np.concatenate([images.image(int(i)).reshape(-1, 3) for i in idx]).astype(np.float64)
    mean = x.mean(0) / 255
    std = np.maximum(x.std(0) / 255, 1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# ---------------------------------------------------------------- digits
@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    x = np.repeat(x[..., None], 3, axis=3)
    y = d.target.astype(np.int64)
    # Fixed stratified split: per class, the DIGITS_TEST_PER_CLASS images with the smallest hash are test.
    with np.errstate(over="ignore"):
        keys = _splitmix64(np.arange(len(y), dtype=np.uint64) ^ np.uint64(0xD1617))
    order = np.lexsort((keys, y))
    is_test = np.zeros(len(y), bool)
    for c in range(10):
        is_test[order[y[order] == c][:DIGITS_TEST_PER_CLASS]] = True
    for a in (x, y):
        a.flags.writeable = False
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def _load_digits() -> dict[str, Any]:
    xtr, ytr, xte, yte = _digits_arrays()
    classes = [str(i) for i in range(10)]
    return dict(
        train=ImageSet(xtr, ytr, classes), test=ImageSet(xte, yte, classes), num_classes=10, classes=classes,
        source=DIGITS_SOURCE,
    )  # fmt: skip


# ---------------------------------------------------------------- npz
def _cache_root() -> Path:
    return Path(os.environ.get("SSL_KD_CACHE") or "~/.cache/ssl_kd/decoded").expanduser()


def _cache_dir_for(path: Path) -> tuple[Path, dict[str, Any]]:
    st = path.stat()
    ident = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return _cache_root() / f"{path.stem}-{key}", ident


def decoded_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz, memory-mapped from an uncompressed per-array copy in the decode cache.

    The shared .npz files are LZMA-compressed (8-10 s to decode); the copy lives under $SSL_KD_CACHE or
    ~/.cache/ssl_kd/decoded, keyed by path, size and mtime, and is written to a temporary folder that is
    renamed into place, so concurrent processes never see half a cache. Small files are read directly.
    """
    path = Path(path)
    if path.stat().st_size < _CACHE_MIN_BYTES:
        return _read_npz(path)
    cache, ident = _cache_dir_for(path)
    if not (cache / "meta.json").is_file():
        try:
            _write_cache(path, cache, ident)
        except OSError as e:  # read-only home, full disk: still usable, just slow
            warnings.warn(f"could not write the decode cache {cache} ({e}); decoding {path} in memory", stacklevel=2)
            return _read_npz(path)
    meta = json.loads((cache / "meta.json").read_text())
    return {k: np.load(cache / f"{k}.npy", mmap_mode="r") for k in meta["arrays"]}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        out = {}
        for k in z.files:
            try:
                out[k] = z[k]
            except ValueError:  # object arrays: not ours to unpickle
                continue
        return out


def _write_cache(path: Path, cache: Path, ident: dict[str, Any]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        names = []
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                try:
                    arr = z[k]
                except ValueError:
                    continue
                np.save(tmp / f"{k}.npy", arr)
                names.append(k)
                del arr
        (tmp / "meta.json").write_text(json.dumps({**ident, "arrays": names}))
        try:
            os.rename(tmp, cache)
        except OSError:
            if not (cache / "meta.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in cache.parent.glob(f"{path.stem}-*"):  # drop copies of older versions of the same file
        try:
            if old != cache and json.loads((old / "meta.json").read_text())["path"] == ident["path"]:
                shutil.rmtree(old, ignore_errors=True)
        except (OSError, ValueError, KeyError):
            continue


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


def _load_npz(path: Path, where: str) -> dict[str, Any]:
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
    return dict(**sets, num_classes=num_classes, classes=classes, source=str(path.absolute()), arrays=arrays)


def _npz_info(path: Path, where: str) -> tuple[int, int, int, int, int, str]:
    """(n_train, n_test, n_unlabeled, classes, image size, source) from array headers only."""
    if not path.is_file():
        raise UserError(f"{where}: no such file {path} (an .npz with x_train, y_train, x_test, y_test).")
    cache, _ = _cache_dir_for(path)
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
    return shapes["x_train"][0], shapes["x_test"][0], unl, classes, shapes["x_train"][1], str(path.absolute())


# ---------------------------------------------------------------- named datasets
def _find_named(cfg: DataConfig) -> tuple[Path, str]:
    """Where a named dataset is: ('torchvision'|'npz'|'download', path). Raises the missing-data UserError."""
    name, root = cfg.dataset, cfg.data_root()
    spec = _TV[name]
    tv_dir = root / spec["folder"] if spec["folder"] else root
    needed = list(spec["files"]) + (spec.get("extra_files", []) if cfg.extra_unlabeled else [])
    if all((tv_dir / f).is_file() for f in needed):
        return tv_dir, "torchvision"
    npz = root / f"{name}.npz"
    if npz.is_file():
        return npz, "npz"
    if cfg.download:
        return root, "download"
    files = ", ".join(needed)
    archive = f" (extract {spec['archive']} there)" if spec["archive"] else ""
    raise UserError(
        f"data.dataset={name}: not found under data root {root}. Put either\n"
        f"  (a) torchvision's files in {tv_dir}/: {files}{archive}, or\n"
        f"  (b) one file {npz} holding arrays x_train, y_train, x_test, y_test (uint8 images N x H x W x 3, "
        f"integer labels),\n"
        f"or set data.download=true to fetch it with torchvision. The root is data.root if set, else "
        f"$SSL_KD_DATA, else {DEFAULT_DATA_ROOT}."
    )


def _load_named(cfg: DataConfig) -> dict[str, Any]:
    name = cfg.dataset
    where, kind = _find_named(cfg)
    if kind == "npz":
        raw = _load_npz(where, f"data.root ({name})")
        if name == "svhn" and not cfg.extra_unlabeled:
            raw.pop("unlabeled", None)
        return raw
    try:
        import torchvision.datasets as tvd
    except ImportError as e:  # pragma: no cover
        raise UserError(f"data.dataset={name}: torchvision is needed to read its files ({e}).") from None
    root = str(cfg.data_root())
    download = kind == "download"
    cls = getattr(tvd, _TV[name]["cls"])

    def get(split: str):
        try:
            if name in ("cifar10", "cifar100"):
                return cls(root, train=split == "train", download=download)
            return cls(root, split=split, download=download)
        except Exception as e:  # torchvision raises RuntimeError/URLError/... for bad or missing files
            verb = "download" if download else "read"
            raise UserError(f"data.dataset={name}: could not {verb} the {split} split under {root}: {e}") from None

    def to_set(ds) -> ImageSet:
        x = np.asarray(ds.data)
        if name in ("svhn", "stl10"):
            x = x.transpose(0, 2, 3, 1)  # torchvision keeps these two as NCHW
        y = np.asarray(ds.targets if hasattr(ds, "targets") else ds.labels, dtype=np.int64)
        return ImageSet(np.ascontiguousarray(x), y, list(getattr(ds, "classes", [])) or None)

    train, test = to_set(get("train")), to_set(get("test"))
    out = dict(train=train, test=test, num_classes=_TV[name]["classes"], classes=train.classes, source=str(where))
    if name == "stl10":
        out["unlabeled"] = to_set(get("unlabeled"))
    elif name == "svhn" and cfg.extra_unlabeled:
        out["unlabeled"] = to_set(get("extra"))
    if kind == "download":
        out["source"] = f"{root} (downloaded by torchvision)"
    return out


# ---------------------------------------------------------------- image folders
def _scan_image_folder(
    root: Path,
) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]], list[str]]:
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

    def scan(d: Path) -> tuple[list[str], list[int]]:
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


def _first_image_size(file: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(file) as im:
        w, h = im.size
    return h, w


def _load_image_folder(root: Path, image_size: int | None) -> dict[str, Any]:
    (ftr, ytr), (fte, yte), classes = _scan_image_folder(root)
    if image_size is None:
        h, w = _first_image_size(ftr[0])
        if h != w:
            raise UserError(
                f"data.image_size: the images under {root} are not square ({ftr[0]} is {w}x{h}); "
                f"set data.image_size to the square size to resize them to."
            )
        image_size = h
    size = (image_size, image_size)
    return dict(
        train=FolderImageSet(ftr, np.array(ytr), size, classes),
        test=FolderImageSet(fte, np.array(yte), size, classes),
        num_classes=len(classes), classes=classes, source=str(root),
    )  # fmt: skip


# ---------------------------------------------------------------- npz-only named datasets, iNaturalist
def _npz_only_path(cfg: DataConfig) -> Path:
    path = cfg.data_root() / f"{cfg.dataset}.npz"
    if not path.is_file():
        raise UserError(
            f"data.dataset={cfg.dataset}: {path} not found. This dataset is {NPZ_ONLY[cfg.dataset]}; set data.root "
            f"to the folder holding {cfg.dataset}.npz (data.root if set, else $SSL_KD_DATA, else {DEFAULT_DATA_ROOT})."
        )
    return path


def _load_inat(cfg: DataConfig) -> dict[str, Any]:
    """iNaturalist JSONs (`data.inat.train` / `.test`) under data.root; labels = category_id, the class count
    from the JSON's categories when they are 0..K-1, else the largest label + 1 (the reference hard-codes it)."""
    root = cfg.data_root()
    size = (cfg.image_size or INAT_IMAGE_SIZE,) * 2
    sets, metas, names = {}, {}, None
    for split, file in (("train", cfg.inat.train), ("test", cfg.inat.test)):
        files, labels, meta, classes = load_inat(root / file, root)
        if not files:
            raise UserError(f"{root / file}: the JSON lists no images.")
        sets[split], metas[split] = FolderImageSet(files, labels, size, classes), meta
        names = names or classes
    num_classes = len(names) if names else int(max(s.targets.max() for s in sets.values()) + 1)
    for s in sets.values():
        s.classes = names
    return dict(**sets, num_classes=num_classes, classes=names, source=str(root), metadata=metas)


def _attach_metadata(cfg: DataConfig, raw: dict[str, Any]) -> str:
    """Encode each split's metadata into the per-sample field `meta` (data.metadata), from the dataset's own
    source (npz keys, iNat JSON), a CSV (image folders) or SYNTHETIC locations. Returns a one-line description."""
    arrays = raw.pop("arrays", None)
    m = cfg.metadata
    if m is None:
        return ""
    where = {"npz": f"data.path ({cfg.path})"}.get(cfg.dataset, f"data.dataset={cfg.dataset}")
    metas = raw.pop("metadata", None) or {}
    if m.csv:
        train, test = raw["train"], raw["test"]
        rm = read_metadata_csv(Path(m.csv).expanduser(), train.files + test.files, Path(cfg.path).expanduser())
        n = len(train)
        cut = lambda a, sl: a[sl]  # noqa: E731
        for split, sl in (("train", slice(0, n)), ("test", slice(n, None))):
            metas[split] = RawMetadata(*(cut(a, sl) for a in (rm.lat, rm.lon, rm.doy, rm.days)), rm.where)
    syn = m.synthetic_location
    for salt, split in enumerate(("train", "test", "unlabeled")):
        s = raw.get(split)
        if s is None:
            continue
        rm = metas.get(split)
        if rm is None:
            rm = npz_metadata(arrays, split, len(s), where) if arrays is not None else RawMetadata.empty(len(s))
        if syn is not None:
            groups = s.targets
            if syn.by == "coarse":
                key = f"y_{split}_coarse"
                if arrays is None or key not in arrays:
                    if split == "unlabeled":
                        groups = None
                    else:
                        raise UserError(
                            f"data.metadata.synthetic_location.by=coarse: {where} has no `{key}` array (coarse "
                            f"labels, e.g. the CIFAR-100 npz); use by: class.")  # fmt: skip
                else:
                    groups = np.asarray(arrays[key], dtype=np.int64)
            if groups is not None and (groups >= 0).all():
                rm.lat, rm.lon = synthetic_locations(groups, syn.seed, syn.spread, salt)
        s.fields["meta"] = rm.encode(m.use, m.missing).astype(np.float32)
        if split == "train" and len(s) and not np.abs(s.fields["meta"]).any():
            raise UserError(
                f"data.metadata: {where} has no usable {'/'.join(m.use)} metadata (every training sample's "
                f"encoding is the zero 'unknown' vector). Give lat_/lon_/date_<split> arrays (npz), a CSV "
                f"(image_folder: data.metadata.csv), the iNat JSON's fields, or data.metadata.synthetic_location; "
                f"when only some parts are known (dates but no coordinates, or synthetic coordinates without dates) "
                f"encode those (`use: [temporal]` / `use: [geo]`) with `missing: used`.")  # fmt: skip
    desc = f"meta = {'+'.join(m.use)} ({meta_dim(m.use)}-d, missing -> zeros: {m.missing})"
    if syn is not None:
        desc += f", SYNTHETIC locations (one region per {syn.by}, spread {syn.spread:g} deg, seed {syn.seed})"
    return desc


# ---------------------------------------------------------------- utils
def _resize_set(s: ImageSet, size: tuple[int, int]) -> ImageSet:
    if s.image_shape == size or len(s) == 0:
        return s
    import cv2

    h, w = s.image_shape
    interp = cv2.INTER_AREA if size[0] < h else cv2.INTER_LINEAR
    out = np.empty((len(s), size[0], size[1], 3), np.uint8)
    for i in range(len(s)):
        out[i] = cv2.resize(np.ascontiguousarray(s.image(i)), (size[1], size[0]), interpolation=interp)
    return ImageSet(out, s.targets, s.classes, s.fields)
