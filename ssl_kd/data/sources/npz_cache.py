"""The decode cache of `.npz` datasets: the shared files are LZMA-compressed (8-10 s to decode each time), so each
array is written once, uncompressed, to a cache folder and memory-mapped afterwards (`decoded_npz`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CACHE_MIN_BYTES = 16 << 20  # smaller .npz files decode fast enough that caching them is not worth the disk


def _cache_root() -> Path:
    return Path(os.environ.get("SSL_KD_CACHE") or "~/.cache/ssl_kd/decoded").expanduser()


def cache_dir_for(path: Path) -> tuple[Path, dict[str, Any]]:
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
    if path.stat().st_size < CACHE_MIN_BYTES:
        return _read_npz(path)
    cache, ident = cache_dir_for(path)
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
