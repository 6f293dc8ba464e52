"""The listing of a class-folder split (`<split>/<class>/<image files>`), cached so that a 1.28M-file tree is not
walked on every start.

The cache is one small JSON per split, under `$SSL_KD_CACHE/index/` (default `~/.cache/ssl_kd/index/`), else beside
the data (`<root>/.ssl_kd_index.<split>.json`) when the cache folder is not writable. It is keyed by the split
folder's and every class folder's mtime (a folder's mtime changes when a file is added, removed or renamed in it), so
checking it costs one `stat` per class instead of one directory entry per image; any change re-lists the tree.
Files are listed as torchvision's ImageFolder lists them: class folders sorted by name, files sorted by name, image
extensions only (not recursive).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ssl_kd.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
VERSION = 1
Listing = tuple[list[str], list[int]]  # files, class indices


def class_dirs(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _key(split_dir: Path, names: list[str]) -> list:
    st = split_dir.stat()
    return [st.st_mtime_ns, [[c, (split_dir / c).stat().st_mtime_ns] for c in names]]


def _cache_files(split_dir: Path) -> list[Path]:
    tag = hashlib.sha1(str(split_dir.resolve()).encode()).hexdigest()[:16]
    home = Path(os.environ.get("SSL_KD_CACHE", "~/.cache/ssl_kd")).expanduser() / "index"
    return [home / f"{tag}.json", split_dir.parent / f".ssl_kd_index.{split_dir.name}.json"]


def _list_class(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return sorted(
            e.name for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file() and e.name[0] != "."
        )


def list_split(split_dir: Path, classes: list[str], use_cache: bool = True) -> Listing:
    """(files, class indices) of `split_dir/<class>/*` for the given class order; a class folder not in `classes`
    or one without images is a UserError naming it."""
    names = class_dirs(split_dir)
    index = {c: i for i, c in enumerate(classes)}
    for c in names:
        if c not in index:
            raise UserError(f"data.path: class folder {split_dir / c} has no counterpart among the training classes.")
    key = [VERSION, str(split_dir.resolve()), _key(split_dir, names)]
    per_class = _read_cache(split_dir, key) if use_cache else None
    if per_class is None:
        per_class = {c: _list_class(split_dir / c) for c in names}
        if use_cache:
            _write_cache(split_dir, key, per_class)
    files, targets = [], []
    for c in names:
        listed = per_class[c]
        if not listed:
            raise UserError(
                f"data.path: class folder {split_dir / c} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"add images or remove the folder."
            )
        base = str(split_dir / c)
        files.extend(f"{base}/{f}" for f in listed)
        targets.extend([index[c]] * len(listed))
    if not files:
        raise UserError(f"data.path: no class folders with images under {split_dir} (expected {split_dir}/<class>/*).")
    return files, targets


def _read_cache(split_dir: Path, key: list) -> dict[str, list[str]] | None:
    for f in _cache_files(split_dir):
        try:
            with open(f, encoding="utf-8") as fh:
                obj = json.load(fh)
        except (OSError, ValueError):
            continue
        if obj.get("key") == json.loads(json.dumps(key)):
            return {c: (v.split("\n") if v else []) for c, v in obj["files"].items()}
    return None


def _write_cache(split_dir: Path, key: list, per_class: dict[str, list[str]]) -> None:
    """Atomic write to the first writable place; a read-only tree and no cache folder just skip caching."""
    obj = {"key": key, "files": {c: "\n".join(v) for c, v in per_class.items()}}
    for f in _cache_files(split_dir):
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(obj, fh)
            os.replace(tmp, f)
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    return
