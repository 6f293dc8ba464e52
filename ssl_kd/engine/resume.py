"""What a checkpoint holds and how a run resumes from it: everything that must survive a restart, in
`checkpoints/last.pt`. (File I/O is `engine.checkpoint_io`; when to save is `callbacks.checkpoint`.)

Models (with their constructor specs), and inside a stage: optimizer, scheduler, the stage's modules and
registered state (EMA models, histories, caches, ...), callback state (incl. half-filled log accumulators),
per-rank RNG, grad scaler, stage index and step. `metrics.jsonl` is truncated back to the checkpoint's byte
offset on resume, so records are never duplicated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssl_kd.config.schema import Config
from ssl_kd.engine.build import check_stage_files, specs
from ssl_kd.engine.checkpoint_io import FORMAT, capture_rng, load_checkpoint, restore_rng
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.engine.run_state import RunState
from ssl_kd.errors import UserError
from ssl_kd.models import create_model_from_spec

if TYPE_CHECKING:
    from accelerate import Accelerator


def checkpoint_state(
    run: RunState, in_stage: bool, resolved: dict[str, Any], metrics_bytes: int, accelerator: Accelerator
) -> dict[str, Any]:
    """The checkpoint of `run` as it stands (at a stage's step, or at the boundary after it)."""
    stage = run.stage
    state: dict[str, Any] = {
        "format": FORMAT,
        "config": resolved,
        "stage_index": run.stage_index if in_stage else run.stage_index + 1,
        "stage_name": stage.name if stage else None,
        "in_stage": in_stage,
        "step": stage.progress.step if (in_stage and stage) else 0,
        "global_step": run.global_step,
        "models": {n: m.state_dict() for n, m in run.models.items()},
        "specs": specs(run.models),
        "results": run.results,
        "metrics_bytes": metrics_bytes,
        "wandb_id": run.wandb_id,
    }
    if in_stage and stage is not None:
        state["stage"] = {
            "optimizer": run.optimizer.state_dict() if run.optimizer else None,
            "scheduler": run.scheduler.state_dict() if run.scheduler else None,
            "modules": {n: m.state_dict() for n, m in stage.modules.items()},
            "states": {n: s.state_dict() for n, s in stage.states.items()},
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in run.callbacks},
        }
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    rng = capture_rng()
    if accelerator.num_processes > 1:
        per_rank: list[Any] = [None] * accelerator.num_processes
        torch.distributed.all_gather_object(per_rank, rng)
        state["rng"] = per_rank
    else:
        state["rng"] = [rng]
    return state


def stage_weights(run: RunState, weights: dict[str, dict[str, dict[str, torch.Tensor]]]) -> dict[str, Any]:
    """The content of `checkpoints/<stage>/<which>.pt`: the given models' (and the stage's modules') weights, with
    their constructor specs."""
    stage = run.stage
    return {
        "format": FORMAT, "stage": stage.name, "step": stage.progress.step, "models": weights["models"],
        "modules": weights.get("modules", {}),
        "specs": {n: s for n, s in specs(run.models).items() if n in weights["models"]},
    }  # fmt: skip


def intact_stage_files(run_dir: RunDir) -> list[Path]:
    """The stage weight files (`checkpoints/<stage>/last.pt`) of a run folder that still load."""
    out = []
    for path in sorted(run_dir.checkpoints.glob("*/last.pt")):
        try:
            load_checkpoint(path)
        except UserError:
            continue
        out.append(path)
    return out


def read_last(run_dir: RunDir) -> dict[str, Any]:
    """`checkpoints/last.pt`; when it is missing or damaged, the checkpoint before it (`previous.pt`) with a line
    saying so; else a UserError that points to the stage weight files still intact."""
    try:
        return load_checkpoint(run_dir.last, "--resume")
    except UserError as e:
        first = e
    if run_dir.previous.is_file():
        try:
            ckpt = load_checkpoint(run_dir.previous, "--resume")
        except UserError as e:
            first = UserError(f"{first} And the checkpoint before it: {e}")
        else:
            print(
                f"{first} Going on from the checkpoint before it, {run_dir.previous} "
                f"(global step {ckpt.get('global_step')}).",
                flush=True,
            )
            return ckpt
    intact = intact_stage_files(run_dir)
    hint = (
        f" Intact stage weights: {', '.join(map(str, intact))}; start a new run that initialises from one "
        f"(stages.<name>.init: {{mode: checkpoint, path: FILE}})."
        if intact
        else ""
    )
    raise UserError(f"{first}{hint}") from None


def stages_started(ckpt: dict[str, Any]) -> list[str]:
    """Names of the stages (in the checkpoint's config) that finished or are in progress."""
    names = list((ckpt.get("config") or {}).get("stages") or {})
    return names[: ckpt["stage_index"] + (1 if ckpt.get("in_stage") else 0)]


def describe_position(ckpt: dict[str, Any], names: list[str]) -> str:
    i = ckpt["stage_index"]
    if ckpt.get("in_stage"):
        return f"stage '{names[i]}' ({i + 1}/{len(names)}) at step {ckpt['step']}"
    if i < len(names):
        return f"the start of stage '{names[i]}' ({i + 1}/{len(names)})"
    return "the end (every stage has run)"


def load_resume(
    run: RunState, cfg: Config, resolved: dict[str, Any], run_dir: RunDir, device: torch.device, is_main: bool
) -> dict[str, Any]:
    """Read `last.pt`, check it belongs to this config, and restore the run-level state (models and counters).

    Changes confined to stages that have not started yet are accepted (listed, and written to config.yaml);
    anything else must be exactly as the checkpoint's config.
    """
    ckpt = read_last(run_dir)
    fmt = ckpt.get("format")
    if isinstance(fmt, str) and fmt.startswith("ssl_kd/") and fmt != FORMAT:
        raise UserError(
            f"--resume: {run_dir.last} was written by another version of ssl_kd (format {fmt}; this version "
            f"resumes {FORMAT}). Finish the run with the version that started it, or start a new run: its stage "
            f"weight files (checkpoints/<stage>/best.pt, last.pt) still initialise one (stages.<name>.init)."
        )
    if fmt != FORMAT:
        raise UserError(f"--resume: {run_dir.last} is not an ssl_kd checkpoint (format {fmt!r}).")
    accepted = check_compatible(ckpt["config"], resolved, str(run_dir.last), stages_started(ckpt))
    for name, spec in (ckpt.get("specs") or {}).items():
        if spec != specs(run.models).get(name):  # the model changed shape at a stage boundary
            run.models[name] = create_model_from_spec(spec).to(device)
    for name, sd in ckpt["models"].items():
        run.models[name].load_state_dict(sd)
    # the files of the stages still to start, before anything in the run folder changes
    first, done = len(stages_started(ckpt)), ckpt["stage_index"]
    check_stage_files(run.models, cfg, run_dir, device, first, done)
    run.results = ckpt["results"]
    run.global_step = ckpt["global_step"]
    run.wandb_id = ckpt.get("wandb_id")
    if is_main:
        if accepted:
            print(f"--resume: stages that have not started yet changed; going on with: {'; '.join(accepted)}")
            run_dir.write_config(resolved)  # config.yaml says what the run now is
        print(f"Resuming {run_dir.root} at {describe_position(ckpt, list(cfg.stages))}", flush=True)
        run_dir.truncate_metrics(ckpt["metrics_bytes"])
    return ckpt


def restore_stage(run: RunState, ckpt: dict[str, Any]) -> None:
    """Put the stage being resumed back where the checkpoint left it."""
    st, stage = ckpt["stage"], run.stage
    if run.optimizer is not None:
        run.optimizer.load_state_dict(st["optimizer"])
        run.scheduler.load_state_dict(st["scheduler"])
    for n, sd in st["modules"].items():
        stage.modules[n].load_state_dict(sd)
    for n, sd in st["states"].items():
        stage.states[n].load_state_dict(sd)
    for cb in run.callbacks:
        cb.load_state_dict(st["callbacks"].get(type(cb).__name__, {}))
    stage.progress.step = ckpt["step"]


def restore_rng_of(accelerator: Accelerator, ckpt: dict[str, Any]) -> None:
    """This rank's RNG streams (and the fp16 grad scaler) as the checkpoint saved them."""
    states = ckpt["rng"]
    rank = accelerator.process_index
    restore_rng(states[rank] if len(states) == accelerator.num_processes else states[0])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])


# keys that may differ between the run that wrote a checkpoint and the one resuming it
RESUME_FREE = (
    "experiment.logger",
    "experiment.output_dir",
    "experiment.imports",  # where the user's modules are found, not what they build (arch / kwargs are compared)
    "data.num_workers",
    "data.root",
    "data.download",
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _resume_free(key: str) -> bool:
    parts = key.split(".", 2)
    if parts[0] == "stages" and len(parts) == 3 and parts[2].startswith("data."):  # a stage's own `data:` block
        key = parts[2]
    return key.startswith(RESUME_FREE)


def _show(diffs: list[str], a: dict[str, Any], b: dict[str, Any], limit: int = 6) -> str:
    shown = "; ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in diffs[:limit])
    return shown + (f" (+{len(diffs) - limit} more)" if len(diffs) > limit else "")


def check_compatible(
    old: dict[str, Any], new: dict[str, Any], where: str, started: list[str] | None = None
) -> list[str]:
    """Compare a checkpoint's config with the resuming one. `started`: the stages that ran or are running (all of
    them when None). Changes inside other stages (or stages added / removed after them) are returned as a list of
    'key: old -> new'; any other difference is a UserError listing them."""
    a, b = _flatten(old), _flatten(new)
    old_names, new_names = list(old.get("stages") or {}), list(new.get("stages") or {})
    started = old_names if started is None else started
    diffs = [
        k for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>") and not _resume_free(k)
    ]  # fmt: skip

    def later(k: str) -> bool:
        parts = k.split(".")
        return parts[0] == "stages" and len(parts) > 1 and parts[1] not in started

    refused, accepted = [k for k in diffs if not later(k)], [k for k in diffs if later(k)]
    order = new_names[: len(started)] != started
    if refused or order:
        what = _show(refused, a, b) if refused else ""
        if order:
            what = (what + "; " if what else "") + (
                f"the stages that ran {started} must stay first, in order (the config has {new_names[: len(started)]})"
            )
        free = [n for n in old_names if n not in started]
        allowed = f" Changes to stages that have not started ({', '.join(free)}) are accepted." if free else ""
        raise UserError(
            f"--resume: the config differs from the one {where} was written with: {what}.{allowed} "
            f"Resume with the run's own config.yaml, or start a new run under another experiment.name."
        )
    return [_show([k], a, b) for k in accepted]
