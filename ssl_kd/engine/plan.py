"""`--dry-run`: validate data, models and every stage's set-up without training, and describe what would run:
per stage its length, models, loss terms and weights, its own options, optimizer, LR schedule, EMA, evaluation
and checkpoint schedule (generically, from the stage's config: the engine knows no method)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel
from torch import nn

from ssl_kd.config.schema import Config, StageConfig
from ssl_kd.data.augment import describe_views
from ssl_kd.engine.build import build_models, check_module_init, check_stage_files, take_snapshots
from ssl_kd.engine.freeze import check_freeze_parts
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.engine.run_state import RunState
from ssl_kd.engine.seed import seed_everything
from ssl_kd.engine.streams import check_streams, stage_lengths
from ssl_kd.models.pretrained import pretrained_source
from ssl_kd.models.pretrained import target as pretrained_target
from ssl_kd.prune import prunable_units

if TYPE_CHECKING:
    from ssl_kd.data import DatasetBundle
    from ssl_kd.engine.stage import Stage

INDENT = " " * 7


def _value(v: Any) -> str:
    if isinstance(v, BaseModel):
        v = v.model_dump()
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _wrap(label: str, text: str) -> list[str]:
    return textwrap.wrap(text, 116, initial_indent=f"{INDENT}{label}: ", subsequent_indent=INDENT + "  ")


def stage_options(scfg: StageConfig) -> str:
    """The stage type's own options (beyond the keys every stage has): every plain value, and each option block
    the YAML sets or the stage uses (`StageConfig.blocks_in_use`); other default blocks are left out."""
    base = set(StageConfig.model_fields)
    shown = scfg.model_fields_set | scfg.blocks_in_use()
    out = []
    for k in type(scfg).model_fields:
        if k in base:
            continue
        v = getattr(scfg, k)
        if isinstance(v, BaseModel) and k not in shown:
            continue
        out.append(f"{k}={_value(v)}")
    return ", ".join(out)


def _every(every: int | None, unit: str, stage_unit: str, default: str) -> str:
    if every is None:
        return default
    u = stage_unit if unit == "auto" else unit
    return f"every {every} {u[:-1] if every == 1 else u}"


def stage_details(scfg: StageConfig, trains: bool) -> list[str]:
    lines = []
    if trains:
        weights = " + ".join(f"{w:g} {k}" for k, w in scfg.loss_weights.items() if w) or "(none weighted)"
        zero = [k for k, w in scfg.loss_weights.items() if not w]
        lines += _wrap("loss", weights + (f"   (weight 0, logged only: {', '.join(zero)})" if zero else ""))
    opts = stage_options(scfg)
    if opts:
        lines += _wrap("options", opts)
    if scfg.prune is not None:
        models = scfg.prune.models or scfg.train
        lines += _wrap("prune", f"{models}: " + ", ".join(f"{k}={_value(v)}" for k, v in scfg.prune if k != "models"))
    for note in getattr(scfg, "plan_notes", list)():  # a stage type's own remarks on its resolved options
        lines += _wrap("note", note)
    if scfg.sampler.kind != "random":
        sc = scfg.sampler
        lines += _wrap("sampler", f"{sc.kind}: {sc.m} images of each class drawn, streams {sc.streams}")
    if trains:
        per_epoch = scfg.scheduler.interval == "epoch" or (scfg.scheduler.interval == "auto" and scfg.unit == "epochs")
        lines += _wrap("optimizer", scfg.optimizer.describe() + (f", clip grad norm {scfg.clip_grad_norm:g}"
                                                                 if scfg.clip_grad_norm else ""))  # fmt: skip
        if scfg.grad_accum > 1:
            lines[-1] += f", {scfg.grad_accum} accumulation steps"
        lines += _wrap("LR schedule", scfg.scheduler.describe(per_epoch))
        e = scfg.ema
        raw = " (and the raw model)" if scfg.eval.raw else ""
        ema = f"decay {e.decay:g}; evaluation reports the EMA model{raw}" if e.enabled else "off"
        if e.enabled and e.apply_at_end:
            ema += "; the stage ends with the EMA weights"
        lines += _wrap("EMA", ema)
    ev, ck = scfg.eval, scfg.checkpoint
    default_eval = "every epoch" if scfg.unit == "epochs" else "at the end"
    when = _every(ev.every, ev.unit, scfg.unit, default_eval) if trains else "once"
    models = f", models {ev.models}" if ev.models else ""
    text = f"{when} (batch {ev.batch_size}{models})"
    if trains:
        default_ckpt = "every epoch" if scfg.unit == "epochs" else "every 1000 steps"
        text += f"; checkpoint {_every(ck.every, ck.unit, scfg.unit, default_ckpt)} and at the end"
        text += ", best weights kept" if ck.save_best else ""
    lines += _wrap("eval", text)
    return lines


@dataclass
class Walked:
    """One stage as the preflight walked it: set up (when enabled), with its length."""

    index: int
    name: str
    cfg: StageConfig
    stage: Stage
    total: int = 0
    spe: int = 0


@dataclass
class Preflight:
    params: dict[str, int] = field(default_factory=dict)  # per model of `models:`, as built
    stages: list[Walked] = field(default_factory=list)


def check_prunable(models: dict[str, nn.Module], name: str, scfg: StageConfig) -> None:
    """`prune:` on a model whose architecture has no pruning units is refused here, not when the stage starts."""
    if scfg.prune is None or not scfg.enabled:
        return
    for m in scfg.prune.models or scfg.train:
        prunable_units(models[m], f"stages.{name}.prune (model '{m}')")


def preflight(
    run: RunState, cfg: Config, run_dir: RunDir, d: DatasetBundle, device: torch.device, world_size: int,
    new_stage: Callable[[int, str, StageConfig], Stage],
) -> Preflight:  # fmt: skip
    """Every check the config, its files and the data decide, before any work: the run CLI calls it before the
    run folder is written, `--dry-run` before it prints the plan. It walks `run` through the schedule as a real run
    would, without training or writing anything: the models are built (`models.<name>.checkpoint` loaded), every
    file a stage loads at its start is checked (`check_stage_files`), and each enabled stage takes its snapshots,
    is set up (its streams, modules and registered option blocks built), has its `init.modules`
    (`check_module_init`) and `prune:` support (`check_prunable`) checked, and its streams' batches and samplers
    (`last_batch`, `sampler:`) sized per process and built (`check_streams`)."""
    seed_everything(cfg.experiment.seed)
    out = Preflight()
    run.models = build_models(cfg, d.num_classes, device, d.train.fields, weights=False)  # names, no download
    out.params = {n: sum(p.numel() for p in m.parameters()) for n, m in run.models.items()}
    check_freeze_parts(run.models, cfg.stages)  # every `freeze:` part names a part of a model
    check_stage_files(run.models, cfg, run_dir, device)
    for i, (name, scfg) in enumerate(cfg.stages.items()):
        run.stage_index = i
        stage = new_stage(i, name, scfg)
        run.stage = stage
        walked = Walked(i, name, scfg, stage)
        out.stages.append(walked)
        if not scfg.enabled:
            continue
        take_snapshots(run.models, scfg)
        stage.setup()
        check_module_init(stage.modules, cfg, run_dir, name, scfg, i)
        check_prunable(run.models, name, scfg)
        walked.total, walked.spe = stage_lengths(stage)
        check_streams(stage, world_size)
    run.stage = None
    return out


def plan(
    run: RunState, cfg: Config, run_dir: RunDir, d: DatasetBundle, device: torch.device, world_size: int,
    new_stage: Callable[[int, str, StageConfig], Stage], numerics: str,
) -> str:  # fmt: skip
    """The dry run's text: the `preflight` (every check a real run makes before its first stage), then what each
    stage would do. `numerics`: the run's precision / memory layout, as the header states them (`Speed.describe`)."""
    exp = cfg.experiment
    speed = numerics + ", "
    speed += f"compile {exp.compile}, " if exp.compile != "no" else ""
    lines = [
        f"Experiment '{exp.name}' (seed {exp.seed}, {speed}{world_size} process(es))",
        f"  run folder: {run_dir.root}",
    ]
    if run_dir.holds_run():
        lines.append(
            "  WARNING: this run folder already holds a run: a real run refuses to start on top of it. Continue it "
            "with --resume, or set experiment.name / experiment.output_dir."
        )
    elif (why := run_dir.creatable()) is not None:
        lines.append(f"  WARNING: the run folder cannot be created ({why}); set experiment.output_dir.")
    if exp.imports:
        lines.append(f"  imports: {', '.join(exp.imports)}")
    lines += [
        f"Data: {d.name}: {len(d.train)} train / {len(d.test)} test images, {d.num_classes} classes, {d.image_size}px",
        f"  {cfg.data.pipeline} pipeline; {describe_views(cfg.data, d)}",
    ]
    if d.info.get("metadata"):
        lines.append(f"  {d.info['metadata']}")
    checked = preflight(run, cfg, run_dir, d, device, world_size, new_stage)
    lines.append("Models:")
    for name, mcfg in cfg.models.items():
        src = f" <- {mcfg.checkpoint}" if mcfg.checkpoint else ""
        if mcfg.pretrained:
            arch = pretrained_target(run.models[name], mcfg.arch, mcfg.kwargs)[1]
            src += f" <- {pretrained_source(arch, mcfg.pretrained)}"
        lines.append(f"  {name:<12} {mcfg.arch:<14} {checked.params[name]:>12,} params{src}")
    lines.append("Stages:")
    for walked in checked.stages:
        i, name, scfg, stage = walked.index, walked.name, walked.cfg, walked.stage
        if not scfg.enabled:
            lines.append(f"  {i + 1}. {name:<14} {scfg.type:<11} (disabled)")
            continue
        total, spe = walked.total, walked.spe
        length = f"{scfg.epochs} epochs x {spe} = {total} steps" if scfg.epochs is not None else f"{total} steps"
        streams = ", ".join(f"{k}: {len(s.dataset)} imgs, batch {s.batch_size}" for k, s in stage.streams.items())
        parts = [f"  {i + 1}. {name:<14} {scfg.type:<11}"]
        if scfg.train:
            parts.append(f"trains {scfg.train}")
        if scfg.uses:
            parts.append(f"reads {scfg.uses}")
        parts.append(length if stage.trains else "evaluation only")
        if streams:
            parts.append(f"[{streams}]")
        if scfg.init.mode != "continue":
            parts.append(f"init: {scfg.init.mode} {scfg.init.stage or scfg.init.path or ''} {scfg.init.which}")
        for snap in scfg.snapshot:
            parts.append(f"snapshot: {snap.of} -> {snap.as_} (frozen)")
        if scfg.data is not None:
            sd = stage.data
            parts.append(f"data: {sd.name} ({len(sd.train)} train / {len(sd.test)} test, {sd.num_classes} classes)")
        lines.append(" ".join(parts))
        for note in cfg._deprecations.get(name, []):  # old keys, rewritten (StageConfig.migrate)
            lines += _wrap("deprecated", note)
        lines += stage_details(scfg, stage.trains)
    return "\n".join(lines)
