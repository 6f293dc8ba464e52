"""Building the experiment's models and loading weights into them: at build (`models.<name>.checkpoint`), at a
stage's start (`init`), and on resume.

Every model carries its constructor spec (`create_model`'s arguments), and every file we write records the spec
of each model in it. When a file's spec differs from the live model's (its shape changed at a stage boundary,
e.g. a pruned export), the model is rebuilt from the file's spec before the weights are loaded.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from ssl_kd.config.schema import Config, StageConfig
from ssl_kd.engine.checkpoint import extract_state_dict, load_checkpoint, load_weights
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.errors import UserError, choices
from ssl_kd.models import create_model, create_model_from_spec, model_spec


def build_models(
    cfg: Config, num_classes: int, device: torch.device, fields: Collection[str] | None = None
) -> dict[str, nn.Module]:
    """Every model of `models:`; with `fields` (the dataset's per-sample fields) a model whose declared extra inputs
    the data lacks is a UserError here rather than a KeyError at the first step."""
    models: dict[str, nn.Module] = {}
    for name, mcfg in cfg.models.items():
        models[name] = create_model(mcfg.arch, mcfg.num_classes or num_classes, head=mcfg.head, **mcfg.kwargs)
        models[name] = models[name].to(device)
        if mcfg.checkpoint:
            where = f"models.{name}.checkpoint"
            if mcfg.checkpoint_partial:
                state = extract_state_dict(load_checkpoint(mcfg.checkpoint, where), name)
                if state is None:
                    raise UserError(f"{where}: {mcfg.checkpoint} holds no recognisable weights.")
                load_weights(models[name], state, False, f"{where} ({mcfg.checkpoint})", partial=True)
            else:
                load_model_file(models, name, mcfg.checkpoint, where, True, device)
        lacking = [k for k in getattr(models[name], "extra_inputs", ()) if fields is not None and k not in fields]
        if lacking:
            raise UserError(
                f"models.{name}: the model takes the extra input(s) {lacking} (e.g. a metadata head needs `meta`), but "
                f"the dataset provides {sorted(fields) or 'no per-sample fields'}; add a `data.metadata` block."
            )
    return models


def specs(models: dict[str, nn.Module]) -> dict[str, dict[str, Any]]:
    return {n: s for n, m in models.items() if (s := model_spec(m)) is not None}


def load_into(
    models: dict[str, nn.Module], name: str, obj: dict[str, Any], path: str, where: str, strict: bool,
    device: torch.device,
) -> None:  # fmt: skip
    """Load model `name`'s weights from a loaded file, rebuilding the model first if the file records another
    shape for it."""
    spec = (obj.get("specs") or {}).get(name)
    if spec is not None and spec != model_spec(models[name]):
        models[name] = create_model_from_spec(spec).to(device)
    state = extract_state_dict(obj, name)
    if state is None:
        have = choices(obj["models"]) if isinstance(obj.get("models"), dict) else "no recognisable weights"
        raise UserError(f"{where}: {path} has no weights for model '{name}' (it has: {have}).")
    load_weights(models[name], state, strict, f"{where} ({path}, model '{name}')")


def load_model_file(
    models: dict[str, nn.Module], name: str, path: str, where: str, strict: bool, device: torch.device
) -> None:
    load_into(models, name, load_checkpoint(path, where), str(path), where, strict, device)


def apply_init(
    models: dict[str, nn.Module], cfg: Config, run_dir: RunDir, name: str, scfg: StageConfig, index: int,
    device: torch.device,
) -> None:  # fmt: skip
    """The stage's `init`: keep the live models, or load an earlier stage's best/last weights, or a file."""
    init = scfg.init
    if init.mode == "continue":
        return
    if init.mode == "stage":
        src = init.stage or list(cfg.stages)[index - 1]
        if not cfg.stages[src].enabled:
            return  # its models come from elsewhere (e.g. models.<name>.checkpoint)
        path = run_dir.stage_file(src, init.which)
        where = f"stages.{name}.init (stage '{src}', {init.which})"
        if not path.is_file():
            raise UserError(f"{where}: {path} does not exist; did stage '{src}' run and evaluate?")
    else:
        path, where = init.path, f"stages.{name}.init.path"
    obj = load_checkpoint(path, where)
    targets = init.models or [m for m in (*scfg.train, *scfg.uses) if extract_state_dict(obj, m) is not None]
    if not targets:
        raise UserError(f"{where}: {path} has weights for none of this stage's models {[*scfg.train, *scfg.uses]}.")
    for m in targets:
        load_into(models, m, obj, str(path), where, init.strict, device)
