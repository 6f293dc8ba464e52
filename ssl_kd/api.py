"""Trained models for inference, in one call:

    model = ssl_kd.load_model("runs/quickstart", "student")          # the run's final weights, eval mode
    model = ssl_kd.load_model("runs/quickstart", "teacher", stage="teacher", which="best")
    model = ssl_kd.load_model("runs/x/checkpoints/distill/best.pt")   # a file holding one model
    logits = model(x).logits                                         # or model.predict({"x": x})

Every file ssl_kd writes records each model's constructor spec, so the model is rebuilt with the shape it was
trained with (also after a stage changed it). A model of the user's own needs its module: `imports=[...]` (the
evaluate CLI's `--import`). Loading weights never runs code a run folder names: the `experiment.imports` of the
run's config.yaml are not imported, only named (one line, and in the error when the model cannot be built without
them), since a folder may come from anyone. A bare state_dict of another tool needs `arch=` and `num_classes=`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from ssl_kd.config.registry import import_modules, not_imported, resolve_import
from ssl_kd.engine.checkpoint_io import extract_state_dict, load_checkpoint, load_weights
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.errors import UserError, choices
from ssl_kd.models import create_model, create_model_from_spec

__all__ = ["load_model", "model_file"]


def _run_root(path: Path) -> Path | None:
    """The run folder a path is (or lies in): the nearest folder holding config.yaml next to checkpoints/."""
    for folder in [path, *path.parents]:
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            return folder
    return None


def _run_imports(root: Path | None) -> list[str]:
    if root is None:
        return []
    try:
        cfg = yaml.safe_load((root / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{root / 'config.yaml'}: unreadable ({e}).") from None
    imports = (cfg.get("experiment") or {}).get("imports") or []
    return [imports] if isinstance(imports, str) else list(imports)


def model_file(
    source: str | Path, name: str | None = None, stage: str | None = None, which: Literal["best", "last"] = "last"
) -> Path:
    """The file to read: `source` itself, or in a run folder `checkpoints/<stage>/<which>.pt` for a stage, else
    `checkpoints/last.pt` (every model as the run left it) or, with which="best", the best weights of the last
    stage whose file holds the model."""
    path = Path(source).expanduser()
    if path.is_file():
        if stage is not None:
            raise UserError(f"{path}: stage='{stage}' picks a file inside a run folder; give the run folder instead.")
        return path
    if not path.is_dir():
        raise UserError(f"{path}: no such file or run folder.")
    run = RunDir(path)
    if stage is not None:
        file = run.stage_file(stage, which)
        if not file.is_file():
            have = sorted(p.name for p in run.checkpoints.iterdir() if p.is_dir()) if run.checkpoints.is_dir() else []
            raise UserError(f"{file}: not found. Stages with weight files here: {choices(have) or '(none)'}.")
        return file
    if which == "last":
        if not run.last.is_file():
            raise UserError(f"{path}: no checkpoints/last.pt; is it a run folder (python -m ssl_kd.run writes one)?")
        return run.last
    stages = [p.parent for p in run.checkpoints.glob("*/best.pt")]
    order = list((yaml.safe_load(run.config.read_text()) or {}).get("stages") or {}) if run.config.is_file() else []
    for folder in sorted(stages, key=lambda p: order.index(p.name) if p.name in order else -1, reverse=True):
        obj = load_checkpoint(folder / "best.pt")
        if name is None or name in (obj.get("models") or {}):
            return folder / "best.pt"
    raise UserError(f"{path}: no checkpoints/<stage>/best.pt holds model '{name}'.")


def load_model(
    source: str | Path,
    name: str | None = None,
    *,
    stage: str | None = None,
    which: Literal["best", "last"] = "last",
    device: str | torch.device = "cpu",
    imports: Sequence[str] = (),
    arch: str | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A trained model, rebuilt and loaded, in eval mode on `device`.

    source: a run folder or a weight file (ours, or a bare / wrapped state_dict). name: the model's name in the
    config (may be left out when the file holds one model). stage / which: a stage's `best` or `last` weights of a
    run folder (default: the run's final `checkpoints/last.pt`). arch / num_classes / kwargs: how to build the
    model when the file records no spec (a state_dict of another tool). Every problem raises a UserError naming
    the file.
    """
    path = model_file(source, name, stage, which)
    given = [resolve_import(e, Path.cwd()) if isinstance(e, str) else e for e in imports]
    import_modules(given, "imports")
    root = _run_root(path.parent)
    skipped = [e for e in not_imported(_run_imports(root)) if e not in given]  # never imported from a folder
    hint = ""
    if skipped:
        hint = (
            f"{root / 'config.yaml'} lists experiment.imports {skipped}, which loading weights does not import; "
            f"if you trust that code, pass it: --import {skipped[0]} (load_model(..., imports=[...]))"
        )
        print(f"ssl_kd: note: {hint}.", file=sys.stderr)
    obj = load_checkpoint(path, "load_model")
    models = obj.get("models") if isinstance(obj.get("models"), dict) else None
    if name is None:
        if models is None:
            name = "model"  # a bare state_dict holds one model
        elif len(models) == 1:
            name = next(iter(models))
        else:
            raise UserError(f"{path}: holds several models ({choices(models)}); name one (name= / --model).")
    if models is not None and name not in models:
        raise UserError(f"{path}: has no weights for model '{name}' (it has: {choices(models)}).")
    spec = (obj.get("specs") or {}).get(name)
    if arch is not None:
        spec = {"arch": arch, "num_classes": num_classes or (spec or {}).get("num_classes"), "kwargs": kwargs}
    if spec is None:
        have = f"models {choices(models)}" if models else "a bare state_dict without a model spec"
        raise UserError(
            f"{path}: no model spec for '{name}' (the file holds {have}); give arch= and num_classes= to build it."
        )
    if spec.get("num_classes") is None:
        raise UserError(f"{path}: give num_classes= for arch '{spec['arch']}'.")
    state = extract_state_dict(obj, name)
    if state is None:
        raise UserError(f"{path}: holds no recognisable weights (a state_dict of tensors, or an ssl_kd file).")
    try:
        model = create_model_from_spec(spec) if arch is None else create_model(arch, spec["num_classes"], **kwargs)
    except UserError as e:
        raise UserError(f"{path}: model '{name}': {e}" + (f" {hint[0].upper()}{hint[1:]}." if hint else "")) from None
    load_weights(model, state, True, f"{path} (model '{name}')")
    return model.to(device).eval()
