"""Checkpoint and resume: everything that must survive a restart, in `checkpoints/last.pt`.

Models (with their constructor specs), and inside a stage: optimizer, scheduler, the stage's modules and
registered state (EMA models, histories, caches, ...), callback state (incl. half-filled log accumulators),
per-rank RNG, grad scaler, stage index and step. `metrics.jsonl` is truncated back to the checkpoint's byte
offset on resume, so records are never duplicated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssl_kd.engine.build import check_stage_files, specs
from ssl_kd.engine.checkpoint import FORMAT, capture_rng, load_checkpoint, restore_rng, save_atomic
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.errors import UserError
from ssl_kd.models import create_model_from_spec

if TYPE_CHECKING:
    from ssl_kd.engine.runner import Runner


def checkpoint_state(runner: Runner, in_stage: bool) -> dict[str, Any]:
    stage = runner.stage
    state: dict[str, Any] = {
        "format": FORMAT,
        "config": runner.resolved,
        "stage_index": runner.stage_index if in_stage else runner.stage_index + 1,
        "stage_name": stage.name if stage else None,
        "in_stage": in_stage,
        "step": stage.progress.step if (in_stage and stage) else 0,
        "global_step": runner.global_step,
        "models": {n: m.state_dict() for n, m in runner.models.items()},
        "specs": specs(runner.models),
        "results": runner.results,
        "metrics_bytes": runner.run_dir.metrics_size() if runner.is_main else 0,
        "wandb_id": runner.wandb_id,
    }
    if in_stage and stage is not None:
        state["stage"] = {
            "optimizer": runner.optimizer.state_dict() if runner.optimizer else None,
            "scheduler": runner.scheduler.state_dict() if runner.scheduler else None,
            "modules": {n: m.state_dict() for n, m in stage.modules.items()},
            "states": {n: s.state_dict() for n, s in stage.states.items()},
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in runner.callbacks},
        }
    scaler = getattr(runner.accelerator, "scaler", None)
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    rng = capture_rng()
    if runner.world_size > 1:
        per_rank: list[Any] = [None] * runner.world_size
        torch.distributed.all_gather_object(per_rank, rng)
        state["rng"] = per_rank
    else:
        state["rng"] = [rng]
    return state


def save_checkpoint(runner: Runner, in_stage: bool) -> None:
    runner.check_finite()
    state = checkpoint_state(runner, in_stage)
    if runner.is_main:
        save_atomic(state, runner.run_dir.last)
    runner.accelerator.wait_for_everyone()


def save_stage_weights(runner: Runner, which: str, weights: dict[str, dict[str, dict[str, torch.Tensor]]]) -> None:
    """`checkpoints/<stage>/<which>.pt`: the given models' (and the stage's modules') weights, with their specs."""
    if runner.is_main:
        stage = runner.stage
        obj = {
            "format": FORMAT, "stage": stage.name, "step": stage.progress.step, "models": weights["models"],
            "modules": weights.get("modules", {}), "specs": {n: s for n, s in specs(runner.models).items()
                                                            if n in weights["models"]},
        }  # fmt: skip
        save_atomic(obj, runner.run_dir.stage_file(stage.name, which))


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
    """`checkpoints/last.pt`, or a UserError that points to the stage weight files still intact."""
    try:
        return load_checkpoint(run_dir.last, "--resume")
    except UserError as e:
        intact = intact_stage_files(run_dir)
        hint = (
            f" Intact stage weights: {', '.join(map(str, intact))}; start a new run that initialises from one "
            f"(stages.<name>.init: {{mode: checkpoint, path: FILE}})."
            if intact
            else ""
        )
        raise UserError(f"{e}{hint}") from None


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


def load_resume(runner: Runner) -> dict[str, Any]:
    """Read `last.pt`, check it belongs to this config, and restore the run-level state (models and counters).

    Changes confined to stages that have not started yet are accepted (listed, and written to config.yaml);
    anything else must be exactly as the checkpoint's config.
    """
    ckpt = read_last(runner.run_dir)
    fmt = ckpt.get("format")
    if isinstance(fmt, str) and fmt.startswith("ssl_kd/") and fmt != FORMAT:
        raise UserError(
            f"--resume: {runner.run_dir.last} was written by another version of ssl_kd (format {fmt}; this version "
            f"resumes {FORMAT}). Finish the run with the version that started it, or start a new run: its stage "
            f"weight files (checkpoints/<stage>/best.pt, last.pt) still initialise one (stages.<name>.init)."
        )
    if fmt != FORMAT:
        raise UserError(f"--resume: {runner.run_dir.last} is not an ssl_kd checkpoint (format {fmt!r}).")
    accepted = check_compatible(ckpt["config"], runner.resolved, str(runner.run_dir.last), stages_started(ckpt))
    for name, spec in (ckpt.get("specs") or {}).items():
        if spec != specs(runner.models).get(name):  # the model changed shape at a stage boundary
            runner.models[name] = create_model_from_spec(spec).to(runner.device)
    for name, sd in ckpt["models"].items():
        runner.models[name].load_state_dict(sd)
    # the files of the stages still to start, before anything in the run folder changes
    first, done = len(stages_started(ckpt)), ckpt["stage_index"]
    check_stage_files(runner.models, runner.cfg, runner.run_dir, runner.device, first, done)
    runner.results = ckpt["results"]
    runner.global_step = ckpt["global_step"]
    runner.wandb_id = ckpt.get("wandb_id")
    if runner.is_main:
        if accepted:
            print(f"--resume: stages that have not started yet changed; going on with: {'; '.join(accepted)}")
            runner.run_dir.write_config(runner.resolved)  # config.yaml says what the run now is
        print(f"Resuming {runner.run_dir.root} at {describe_position(ckpt, list(runner.cfg.stages))}", flush=True)
        runner.run_dir.truncate_metrics(ckpt["metrics_bytes"])
    return ckpt


def restore_stage(runner: Runner, ckpt: dict[str, Any]) -> None:
    """Put the stage being resumed back where the checkpoint left it."""
    st, stage = ckpt["stage"], runner.stage
    if runner.optimizer is not None:
        runner.optimizer.load_state_dict(st["optimizer"])
        runner.scheduler.load_state_dict(st["scheduler"])
    for n, sd in st["modules"].items():
        stage.modules[n].load_state_dict(sd)
    for n, sd in st["states"].items():
        stage.states[n].load_state_dict(sd)
    for cb in runner.callbacks:
        cb.load_state_dict(st["callbacks"].get(type(cb).__name__, {}))
    stage.progress.step = ckpt["step"]


def restore_rng_of(runner: Runner, ckpt: dict[str, Any]) -> None:
    states = ckpt["rng"]
    rank = runner.accelerator.process_index
    restore_rng(states[rank] if len(states) == runner.world_size else states[0])
    scaler = getattr(runner.accelerator, "scaler", None)
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
