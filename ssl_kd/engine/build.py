"""Building the experiment's models and loading weights into them: at build (`models.<name>.checkpoint`), at a
stage's start (`init`), and on resume.

Every model carries its constructor spec (`create_model`'s arguments), and every file we write records the spec
of each model in it. When a file's spec differs from the live model's (its shape changed at a stage boundary,
e.g. a pruned export), the model is rebuilt from the file's spec before the weights are loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_kd.config.schema import Config, StageConfig
from ssl_kd.engine.checkpoint_io import check_fits, extract_state_dict, load_checkpoint, load_weights
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.errors import UserError, choices, suggest
from ssl_kd.models import create_model, create_model_from_spec, model_spec
from ssl_kd.models.pretrained import load_pretrained, weights_entry
from ssl_kd.models.pretrained import target as pretrained_target


def build_models(
    cfg: Config, num_classes: int, device: torch.device, fields: Collection[str] | None = None, *, weights: bool = True
) -> dict[str, nn.Module]:
    """Every model of `models:`; with `fields` (the dataset's per-sample fields) a model whose declared extra inputs
    the data lacks is a UserError here rather than a KeyError at the first step. `weights=False` (the dry run, a
    resume) checks `pretrained:` names without downloading or loading them."""
    models: dict[str, nn.Module] = {}
    for name, mcfg in cfg.models.items():
        try:
            models[name] = create_model(mcfg.arch, mcfg.num_classes or num_classes, head=mcfg.head, **mcfg.kwargs).to(
                device
            )
        except UserError as e:  # an option value the factory refused: say which YAML entry
            raise UserError(f"models.{name}: {e}") from None
        if mcfg.pretrained:
            where = f"models.{name}.pretrained"
            module, arch = pretrained_target(models[name], mcfg.arch, mcfg.kwargs)
            if weights:
                load_pretrained(module, arch, mcfg.pretrained, where)
            else:
                weights_entry(arch, mcfg.pretrained, where)
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
    model, state = _target(models, name, obj, path, where, device)
    models[name] = model
    load_weights(model, state, strict, f"{where} ({path}, model '{name}')")


def _target(
    models: dict[str, nn.Module], name: str, obj: dict[str, Any], path: str, where: str, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """(the model the file's weights go into, those weights): the live model, or one rebuilt from the file's spec."""
    spec = (obj.get("specs") or {}).get(name)
    model = models[name]
    if spec is not None and spec != model_spec(model):
        try:
            model = create_model_from_spec(spec).to(device)
        except UserError as e:  # e.g. a model of the user's whose module is not imported here
            raise UserError(f"{where}: {path} records model '{name}' as {spec.get('arch')!r}: {e}") from None
    state = extract_state_dict(obj, name)
    if state is None:
        have = choices(obj["models"]) if isinstance(obj.get("models"), dict) else "no recognisable weights"
        raise UserError(f"{where}: {path} has no weights for model '{name}' (it has: {have}).")
    return model, state


def load_model_file(
    models: dict[str, nn.Module], name: str, path: str, where: str, strict: bool, device: torch.device
) -> None:
    load_into(models, name, load_checkpoint(path, where), str(path), where, strict, device)


def _init_source(cfg: Config, run_dir: RunDir, name: str, scfg: StageConfig, index: int) -> tuple[Path, str] | None:
    """(file, YAML path for messages) a stage's `init` loads from; None when it keeps the live models."""
    init = scfg.init
    if init.mode == "continue":
        return None
    if init.mode == "stage":
        src = init.stage or list(cfg.stages)[index - 1]
        if not cfg.stages[src].enabled:
            return None  # its models come from elsewhere (e.g. models.<name>.checkpoint)
        return run_dir.stage_file(src, init.which), f"stages.{name}.init (stage '{src}', {init.which})"
    return Path(str(init.path)).expanduser(), f"stages.{name}.init.path"


def _init_targets(obj: dict[str, Any], scfg: StageConfig, path: Path, where: str) -> list[str]:
    if scfg.init.models is not None:
        return scfg.init.models
    targets = [m for m in (*scfg.train, *scfg.uses) if extract_state_dict(obj, m) is not None]
    if not targets and not scfg.init.modules:
        raise UserError(f"{where}: {path} has weights for none of this stage's models {[*scfg.train, *scfg.uses]}.")
    return targets


def apply_init(
    models: dict[str, nn.Module], cfg: Config, run_dir: RunDir, name: str, scfg: StageConfig, index: int,
    device: torch.device,
) -> None:  # fmt: skip
    """The stage's `init`: keep the live models, or load an earlier stage's best/last weights, or a file."""
    source = _init_source(cfg, run_dir, name, scfg, index)
    if source is None:
        return
    path, where = source
    if scfg.init.mode == "stage" and not path.is_file():
        raise UserError(f"{where}: {path} does not exist; did that stage run and evaluate?")
    obj = load_checkpoint(path, where)
    for m in _init_targets(obj, scfg, path, where):
        load_into(models, m, obj, str(path), where, scfg.init.strict, device)


def take_snapshots(models: dict[str, nn.Module], scfg: StageConfig) -> None:
    """The stage's `snapshot`s: frozen copies of models as they stand now (after `init`), added to the run's
    models (so they are read like any model and saved in every later checkpoint)."""
    for snap in scfg.snapshot:
        models[snap.as_] = copy.deepcopy(models[snap.of]).requires_grad_(False).eval()


def _module_source(
    modules: dict[str, nn.Module], cfg: Config, run_dir: RunDir, name: str, scfg: StageConfig, index: int
) -> tuple[Path, str]:
    """(file, YAML path) `init.modules` load from, once the stage's setup() registered `modules`."""
    source = _init_source(cfg, run_dir, name, scfg, index)
    if source is None:
        raise UserError(
            f"stages.{name}.init.modules: {scfg.init.modules} need a source: init.mode 'stage' (an enabled earlier "
            f"stage) or 'checkpoint' (a stage weight file); got mode '{scfg.init.mode}'"
            + (f" with stage '{scfg.init.stage}' disabled" if scfg.init.mode == "stage" else "")
            + "."
        )
    for m in scfg.init.modules:
        if m not in modules:
            raise UserError(
                f"stages.{name}.init.modules: this stage registers no module '{m}'.{suggest(m, modules)} It has "
                f"{sorted(modules) or 'none'}."
            )
    return source


def _saved_module(saved: dict[str, Any], m: str, path: Path, where: str) -> dict[str, Any]:
    if m not in saved:
        raise UserError(f"{where}: {path} holds no module '{m}' (it has {sorted(saved) or 'none'}).")
    return saved[m]


def apply_module_init(
    modules: dict[str, nn.Module], cfg: Config, run_dir: RunDir, name: str, scfg: StageConfig, index: int
) -> None:
    """`init.modules`: load the stage's registered modules named there from the init source's `modules` (a stage
    weight file), so a head trained by one stage (SSKD's teacher projection) starts the next."""
    if not scfg.init.modules:
        return
    path, where = _module_source(modules, cfg, run_dir, name, scfg, index)
    if not path.is_file():
        raise UserError(f"{where}: {path} does not exist; did that stage run?")
    saved = load_checkpoint(path, where).get("modules") or {}
    for m in scfg.init.modules:
        state = _saved_module(saved, m, path, where)
        load_weights(modules[m], state, scfg.init.strict, f"{where} ({path}, module '{m}')")


def check_module_init(
    modules: dict[str, nn.Module], cfg: Config, run_dir: RunDir, name: str, scfg: StageConfig, index: int,
    done: int = 0,
) -> None:  # fmt: skip
    """Before any work (after the stage's setup() registered its modules): `init.modules` names modules the stage
    registers and has a source; a file from outside this session (`init.path`, or a stage among the `done` ones)
    holds each of them in a shape that fits. A stage that runs in this session writes its own file."""
    if not scfg.init.modules:
        return
    path, where = _module_source(modules, cfg, run_dir, name, scfg, index)
    if scfg.init.mode == "stage" and list(cfg.stages).index(scfg.init.stage or list(cfg.stages)[index - 1]) >= done:
        return
    saved = load_checkpoint(path, where).get("modules") or {}
    for m in scfg.init.modules:
        state = _saved_module(saved, m, path, where)
        check_fits(modules[m], state, scfg.init.strict, f"{where} ({path}, module '{m}')")


def check_stage_files(
    models: dict[str, nn.Module], cfg: Config, run_dir: RunDir, device: torch.device, first: int = 0, done: int = 0
) -> None:
    """Before any work: every file a stage from index `first` on will load at its start (`init.path`, or the weights
    of one of the `done` stages finished in an earlier session) exists, loads weights-only and fits its models, so
    a bad file of the last stage is reported before the first one trains. Stages yet to finish write their own."""
    names = list(cfg.stages)
    for index, (name, scfg) in enumerate(cfg.stages.items()):
        if index < first or not scfg.enabled:
            continue
        source = _init_source(cfg, run_dir, name, scfg, index)
        if source is None:
            continue
        path, where = source
        if scfg.init.mode == "stage" and names.index(scfg.init.stage or names[index - 1]) >= done:
            continue  # that stage finishes in this session and writes the file
        obj = load_checkpoint(path, where)
        for m in _init_targets(obj, scfg, path, where):
            model, state = _target(models, m, obj, str(path), where, device)
            check_fits(model, state, scfg.init.strict, f"{where} ({path}, model '{m}')")
