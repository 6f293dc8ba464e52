"""Checkpoint I/O: atomic writes, safe loads, RNG capture, weight loading from our files or raw state_dicts."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_kd.errors import UserError

# ssl_kd/2: EMA models and registered modules live in the stage state (ssl_kd/1 kept the EMA in callback state)
FORMAT = "ssl_kd/2"


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load a file weights-only (tensors and plain data, never code); every failure is one UserError.

    torch's own message for a refused pickle suggests `weights_only=False`, i.e. running whatever code the file
    holds: it is never passed on.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what}: {path} is a folder; give a checkpoint file (e.g. {path}/checkpoints/last.pt).")
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle that holds more than weights
        if "weights_only" in str(e) or "Unsupported global" in str(e):
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
