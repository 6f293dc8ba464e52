"""Checkpoint I/O: atomic writes, safe loads, RNG capture, weight loading from our files or raw state_dicts."""

from __future__ import annotations

import errno
import os
import pickletools
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_kd.errors import TrainingStopped, UserError

# ssl_kd/2: EMA models and registered modules live in the stage state (ssl_kd/1 kept the EMA in callback state)
FORMAT = "ssl_kd/2"


class CheckpointWriteError(TrainingStopped):
    """A checkpoint could not be written (disk full, file-size limit, read-only folder): the run stops with one
    line naming the file and the cause; the previous checkpoint is untouched."""


class _Recording:
    """A file wrapper that keeps the OSError of a failed write: torch turns it into `unexpected pos ...`."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def previous_of(path: Path) -> Path:
    """Where `save_atomic(..., keep_previous=True)` keeps the file it replaces."""
    return path.with_name("previous" + path.suffix) if path.stem == "last" else path.with_suffix(".previous.pt")


def save_atomic(obj: Any, path: str | Path, *, keep_previous: bool = False) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: a crash never leaves a torn file.

    ``keep_previous``: the file replaced stays as `previous.pt`, the fallback of a resume when `last.pt` turns out
    damaged. A failed write raises CheckpointWriteError naming the file and the OS's reason (ENOSPC, EFBIG, EROFS).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    rec = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                rec = _Recording(f)
                torch.save(obj, rec)
                f.flush()
                os.fsync(f.fileno())
            if keep_previous and path.exists():
                os.replace(path, previous_of(path))
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except (OSError, RuntimeError) as e:
            cause = (rec.error if rec is not None else None) or e
            if not isinstance(cause, OSError):
                raise
            why = cause.strerror or str(cause)
            code = errno.errorcode.get(cause.errno or 0, "")
            kept = "; the previous checkpoint is intact" if path.exists() else ""
            raise CheckpointWriteError(
                f"cannot write {path} ({why}{', ' + code if code else ''}){kept}. Free space or fix the folder "
                f"{path.parent}, then continue with --resume."
            ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable (a power cut right after must not bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_orphans(folder: Path) -> list[Path]:
    """Delete the temp files of writes that a killed process left (`.last.pt.tmp-<pid>`). Call it only while holding
    the run lock: then no other process is writing in the folder."""
    found = sorted(folder.rglob(".*.tmp-*")) if folder.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def verify(path: Path) -> str | None:
    """Why `path` fails its stored checksums (torch writes a zip with a CRC-32 per record, which torch's reader
    never checks), or None when every record matches. A file that is not a zip (an old torch format) has none."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:  # a damaged header or directory
        return f"its zip structure is damaged ({e})"
    return f"the checksum of record {bad!r} does not match: the file changed after it was written" if bad else None


def _is_whole_pickle(path: Path) -> bool:
    """Is the file (or its zip's data.pkl) a complete pickle? Then torch refused it for what it holds, not because
    it is damaged. Only the opcodes are read (pickletools never runs them)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            data = path.read_bytes()
        return any(op.name == "STOP" for op, _, _ in pickletools.genops(data))
    except Exception:  # not a pickle: random bytes, a torn write
        return False


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load a file weights-only (tensors and plain data, never code) after verifying its checksums; every failure
    is one UserError that says whether the file is damaged or unsafe.

    torch's own message for a refused pickle suggests `weights_only=False`, i.e. running whatever code the file
    holds: it is never passed on.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what}: {path} is a folder; give a checkpoint file (e.g. {path}/checkpoints/last.pt).")
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{what}: {path} is unreadable: it is empty (0 bytes): not a checkpoint, or damaged.")
    damaged = verify(path)
    if damaged:
        raise UserError(f"{what}: {path} is damaged: {damaged}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle that holds more than weights
        text = str(e)
        if "GLOBAL" in text or "Unsupported global" in text or _is_whole_pickle(path):
            why = "it holds Python objects besides tensors and plain data, which ssl_kd never loads (unsafe)"
        else:
            why = f"not a torch checkpoint, or damaged / truncated ({type(e).__name__})"
        raise UserError(f"{what}: {path} is unreadable: {why}.") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what}: {path} holds a {type(obj).__name__}, expected a dict of tensors.")
    return obj


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


def extract_state_dict(obj: dict[str, Any], model_name: str) -> dict[str, torch.Tensor] | None:
    """Find `model_name`'s weights in one of our files, or accept a bare/wrapped state_dict of other tools."""
    if "models" in obj and isinstance(obj["models"], dict):
        return obj["models"].get(model_name)
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return None


def check_fits(model: nn.Module, state: dict[str, Any], strict: bool, where: str) -> None:
    """Raise a UserError naming the file/key when `state` does not fit `model` (torch's wall of keys otherwise)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and getattr(state[k], "shape", None) != own[k].shape]
    if shape or (strict and (missing or unexpected)):
        parts = []
        if shape:
            k = shape[0]
            parts.append(
                f"{len(shape)} tensor(s) differ in shape "
                f"(e.g. {k}: file {tuple(getattr(state[k], 'shape', ()))} vs model {tuple(own[k].shape)})"
            )
        if strict and missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if strict and unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UserError(
            f"{where}: weights do not fit the model: " + "; ".join(parts) + ". Is it the same architecture?"
        )


def load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], strict: bool, where: str, partial: bool = False
) -> None:
    """Load with a message that names the file/key instead of torch's wall of missing keys.

    ``partial``: load only the tensors whose name and shape fit (a pretrained backbone under a new head and fc),
    print how many were skipped, and refuse a file of which nothing fits."""
    own = model.state_dict()
    if partial:
        shape = [k for k in own if k in state and getattr(state[k], "shape", None) != own[k].shape]
        fit = {k: v for k, v in state.items() if k in own and k not in shape}
        if not fit:
            raise UserError(f"{where}: no tensor of the file fits the model (names or shapes differ everywhere).")
        model.load_state_dict(fit, strict=False)
        missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
        print(
            f"{where}: loaded {len(fit)}/{len(own)} tensors; kept the fresh init of {len(own) - len(fit)} "
            f"(e.g. {(shape + missing or ['-'])[0]}), ignored {len(unexpected) + len(shape)} from the file."
        )
        return
    check_fits(model, state, strict, where)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
