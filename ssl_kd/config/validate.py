"""Turn a raw config dict into typed configs, or one clear error naming the YAML path of the problem."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ssl_kd.components import PolicyOptions
from ssl_kd.config.loader import apply_overrides, deep_merge, load_yaml, resolve_references
from ssl_kd.config.registry import import_modules, not_imported, resolve_import, stage_types
from ssl_kd.config.schema import Config, StageConfig
from ssl_kd.data.config import DataConfig
from ssl_kd.errors import UserError, choices, suggest
from ssl_kd.models import list_models, model_options
from ssl_kd.optim.groups import loss_groups


def _model_at(model: type[BaseModel], loc: tuple[Any, ...], raw: Any = None) -> type[BaseModel] | None:
    """Follow a pydantic error location down the schema (and the raw block beside it) to the model that owns its
    last key. A policy block (`temperature: {policy: dtd}`) resolves to the named policy's own options."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        raw = raw.get(part) if isinstance(raw, dict) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        candidates = [ann, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            # dict[str, Model]: the next loc part is the key
            dict_args = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            current = dict_args[0] if dict_args else None
        elif issubclass(current, PolicyOptions):
            current = current.registry.owner(raw) or current
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(
    err: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...] = (), raw: Any = None
) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, loc, raw)
            valid = list(owner.model_fields) if owner else []
            hint = suggest(str(loc[-1]), valid)
            lines.append(f"{path}: unknown key.{hint} Valid keys here: {choices(valid)}.")
        elif e["type"] == "missing":
            lines.append(f"{path}: required key is missing.")
        elif e["type"] == "literal_error":
            lines.append(f"{path}: {e['msg'].replace('Input should be', 'must be')}, got {e['input']!r}.")
        else:
            msg = e["msg"].replace("Value error, ", "")
            got = f", got {e['input']!r}" if not isinstance(e.get("input"), dict) else ""
            lines.append(f"{path}: {msg}{got}.")
    return "\n".join(lines)


def _validate(model: type[BaseModel], raw: Any, prefix: tuple[Any, ...], source: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{source}: " + format_validation_error(e, model, prefix, raw)) from None


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_name(name: Any, where: str, what: str) -> None:
    """Stage and model names become folder and file names (`checkpoints/<stage>/best.pt`) and dotted paths
    (`freeze: [teacher.backbone]`): a plain identifier only, so `../../x` cannot write outside the run folder."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(
            f"{where}: {what} name {name!r} is not a plain identifier; use letters, digits and _ (not starting with "
            f"a digit), e.g. 'teacher' or 'stage_2'."
        )


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate every block; stage blocks by the schema of their `type`."""
    cfg = _validate(Config, raw, (), source)
    for name in cfg.models:
        check_name(name, f"{source}: models", "model")
    for name in cfg.stages or {}:
        check_name(name, f"{source}: stages", "stage")
    cfg.data = _validate(DataConfig, cfg.data or {}, ("data",), source)
    types = stage_types()
    typed: dict[str, StageConfig] = {}
    for name, block in (cfg.stages or {}).items():
        if not isinstance(block, dict):
            raise UserError(f"{source}: stages.{name}: must be a mapping with at least `type`, got {block!r}.")
        st = block.get("type")
        if st is None:
            raise UserError(f"{source}: stages.{name}.type: required key is missing (one of {choices(types)}).")
        if st not in types:
            raise UserError(
                f"{source}: stages.{name}.type: unknown stage type '{st}'.{suggest(st, types)} Valid: {choices(types)}."
            )
        block, notes = _migrate(types, st, block, f"{source}: stages.{name}")
        cfg._deprecations[name] = notes
        typed[name] = _validate(types[block["type"]].Config, block, ("stages", name), source)
        if typed[name].data is not None:  # the stage's own dataset: merged key by key over the top-level data
            if not isinstance(typed[name].data, dict):
                raise UserError(f"{source}: stages.{name}.data: must be a mapping like `data:`, got {block['data']!r}.")
            merged = deep_merge(raw.get("data") or {}, typed[name].data)
            typed[name].data = _validate(DataConfig, merged, ("stages", name, "data"), source)
    cfg.stages = typed
    _check_models(cfg, source)
    _check_references(cfg, source)
    return cfg


def _migrate(types: dict[str, Any], st: str, block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """A stage block with its old keys rewritten by its type (and by the type an alias leads to)."""
    seen, notes = [st], []
    while True:
        try:
            block, more = types[st].Config.migrate(dict(block))
        except ValueError as e:
            raise UserError(f"{where}: {e}.") from None
        notes += more
        st = block.get("type", st)
        if st in seen:
            return block, notes
        seen.append(st)


def _check_models(cfg: Config, source: str) -> None:
    """Architecture names and their options, checked here so the error names the YAML path."""
    valid = list_models()
    for name, m in cfg.models.items():
        if m.arch not in valid:
            raise UserError(
                f"{source}: models.{name}.arch: unknown model '{m.arch}'.{suggest(m.arch, valid)} Valid models: "
                f"{choices(valid)} (a model of your own: register it and list its module in experiment.imports)."
            )
        options = model_options(m.arch)
        for key in m.kwargs:
            if key not in options:
                raise UserError(
                    f"{source}: models.{name}.kwargs.{key}: model '{m.arch}' has no option '{key}'."
                    f"{suggest(key, options)} Its options: {choices(options) or '(none)'}."
                )


def _check_references(cfg: Config, source: str) -> None:
    if not cfg.stages:
        raise UserError(
            f"{source}: stages: at least one stage is needed (e.g. `stages: {{train: {{type: supervised}}}}`)."
        )
    names = list(cfg.stages)
    known = dict(cfg.models)  # models, and the snapshots of this and earlier stages
    for i, (name, st) in enumerate(cfg.stages.items()):
        where = f"{source}: stages.{name}"
        for snap in st.snapshot:
            check_name(snap.as_, f"{where}.snapshot.as", "model")
            if snap.of not in known:
                raise UserError(
                    f"{where}.snapshot.of: model '{snap.of}' is not defined.{suggest(snap.of, known)} "
                    f"Defined: {choices(known) or '(none)'}."
                )
            if snap.as_ in cfg.models:
                raise UserError(
                    f"{where}.snapshot.as: '{snap.as_}' is already a model under `models`; name the snapshot "
                    f"differently (e.g. '{snap.of}_snapshot')."
                )
            if snap.as_ in st.train:
                raise UserError(f"{where}.snapshot.as: the snapshot '{snap.as_}' is frozen; it cannot be in `train`.")
            known[snap.as_] = None
        for key in ("train", "uses"):
            for m in getattr(st, key):
                if m not in known:
                    raise UserError(
                        f"{where}.{key}: model '{m}' is not defined under `models`.{suggest(m, known)} "
                        f"Defined: {choices(known) or '(none)'}."
                    )
        overlap = set(st.train) & set(st.uses)
        if overlap:
            raise UserError(
                f"{where}: {sorted(overlap)} listed in both `train` and `uses`; a model is one or the other."
            )
        if st.init.mode == "stage":
            earlier = names[:i]
            target = st.init.stage or (earlier[-1] if earlier else None)
            if target is None:
                raise UserError(f"{where}.init: mode 'stage' needs an earlier stage, but '{name}' is the first.")
            if target not in earlier:
                raise UserError(
                    f"{where}.init.stage: '{target}' is not an earlier stage.{suggest(target, earlier)} "
                    f"Earlier stages: {choices(earlier) or '(none)'}."
                )
        if st.init.mode == "checkpoint" and not st.init.path:
            raise UserError(f"{where}.init.path: mode 'checkpoint' needs a file path.")
        if st.enabled and st.train and 0 in (st.iters, st.epochs):
            key = "iters" if st.iters == 0 else "epochs"
            raise UserError(
                f"{where}.{key}: 0 trains nothing: {st.train} would stay untrained for every stage after it. Give "
                f"a positive length, or skip the stage with stages.{name}.enabled=false."
            )
        if cfg.experiment.precision == "fp16" and st.enabled and loss_groups(st.optimizer, st.loss_weights):
            raise UserError(
                f"{where}.optimizer.name: '{st.optimizer.name}' backpropagates its loss groups separately, which "
                f"fp16 loss scaling does not support; use experiment.precision=bf16 or no."
            )
        for m in st.eval.models or []:
            if m not in known:
                raise UserError(f"{where}.eval.models: model '{m}' is not defined.{suggest(m, known)}")
        for m in st.init.models or []:
            if m not in known:
                raise UserError(f"{where}.init.models: model '{m}' is not defined.{suggest(m, known)}")


def _check_override_targets(raw: dict[str, Any], overrides: list[tuple[str, Any]], source: str) -> None:
    """`stages.nope.lr=1` names a stage the config does not have: say so (instead of a missing `type`), unless
    the command line adds that stage (or model) whole, with its `type` (`arch`)."""
    for block, required in (("stages", "type"), ("models", "arch")):
        existing = raw.get(block) if isinstance(raw.get(block), dict) else {}
        keys = [k for k, _ in overrides]
        for key, value in overrides:
            parts = key.split(".")
            if parts[0] != block or len(parts) < 2 or parts[1] in existing:
                continue
            name = parts[1]
            adds = f"{block}.{name}.{required}" in keys or any(
                k == f"{block}.{name}" and isinstance(v, dict) and required in v for k, v in overrides
            )
            if not adds:
                what = "stage" if block == "stages" else "model"
                raise UserError(
                    f"override '{key}={value}': {source} has no {what} '{name}'.{suggest(name, existing)} "
                    f"{what.capitalize()}s: {choices(existing) or '(none)'}. (To add one, also give "
                    f"{block}.{name}.{required}=...)"
                )


def resolve_config(
    path: str | Path, overrides: list[tuple[str, Any]], imports: list[str] | tuple[str, ...] = (),
    *, yaml_imports: bool = True,
) -> tuple[Config, dict[str, Any]]:  # fmt: skip
    """YAML (+ `_base_`) then CLI overrides (CLI wins) -> (typed config, raw resolved dict).

    `experiment.imports` (plus `imports`, from `--import`) are imported before validation, so the models and stage
    types they register are valid names; `.py` entries are stored as absolute paths, for resume from anywhere.
    With `yaml_imports=False` (`--resume`: a run folder's config.yaml, which may come from anyone) only what the
    user passes with `--import` is imported; the others are named in one line, and in the error if the config
    cannot be validated without them.
    """
    path = Path(path)
    raw = load_yaml(path)
    _check_override_targets(raw, overrides, str(path))
    raw = resolve_references(apply_overrides(raw, overrides))
    exp = raw.setdefault("experiment", {}) or {}
    raw["experiment"] = exp
    if isinstance(exp, dict) and not exp.get("name"):
        exp["name"] = path.stem if path.name != "config.yaml" else path.parent.name
    hint = ""
    if isinstance(exp, dict) and (exp.get("imports") or imports):
        given = exp.get("imports") or []
        given = [given] if isinstance(given, str) else given
        if not isinstance(given, list):
            raise UserError(f"{path}: experiment.imports: expected a list of modules or .py files, got {given!r}.")
        entries = [resolve_import(e, path.parent) if isinstance(e, str) else e for e in given]
        cli = [resolve_import(e, Path.cwd()) for e in imports]  # --import: relative to where it runs
        exp["imports"] = list(dict.fromkeys(entries + cli))
        skipped = [] if yaml_imports else [e for e in not_imported(exp["imports"]) if e not in cli]
        if skipped:
            hint = (f"{path} lists experiment.imports {skipped}, which --resume does not import; if you trust that "
                    f"code, pass it: --import {skipped[0]}")  # fmt: skip
            if os.environ.get("RANK", "0") == "0":
                print(f"ssl_kd: note: {hint}.", file=sys.stderr)
        import_modules([e for e in exp["imports"] if e not in skipped])
    try:
        cfg = validate_config(raw, str(path))
    except UserError as e:
        if hint:
            raise UserError(f"{e} ({hint}.)") from None
        raise
    check_precision(cfg, str(path))
    return cfg, raw


def check_precision(cfg: Config, source: str) -> None:
    """fp16 needs a GPU: on CPU accelerate would silently train in fp32, so refuse it (in --dry-run too)."""
    if cfg.experiment.precision != "fp16":
        return
    import torch

    mps = getattr(torch.backends, "mps", None)
    if torch.cuda.is_available() or (mps is not None and mps.is_available()):
        return
    raise UserError(
        f"{source}: experiment.precision: 'fp16' needs a GPU and this machine has none (on CPU it would be "
        f"silently ignored). Choices that work here: 'no', 'bf16'."
    )


def resolved_dict(cfg: Config) -> dict[str, Any]:
    """The fully resolved config (defaults filled in) as plain data, for config.yaml and W&B."""
    out = cfg.model_dump(mode="json")
    out["data"] = cfg.data.model_dump(mode="json")
    out["stages"] = {k: v.model_dump(mode="json") for k, v in cfg.stages.items()}
    for k, v in cfg.stages.items():
        if v.data is not None:
            out["stages"][k]["data"] = v.data.model_dump(mode="json")
    return out
