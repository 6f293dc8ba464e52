"""`--dry-run`: validate data, models and every stage's set-up without training, and describe what would run:
per stage its length, models, loss terms and weights, its own options, optimizer, LR schedule, EMA, evaluation
and checkpoint schedule (generically, from the stage's config: the engine knows no method)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel

from ssl_kd.config.schema import Config, StageConfig
from ssl_kd.engine.build import build_models, check_stage_files, take_snapshots
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.engine.run_state import RunState
from ssl_kd.engine.seed import seed_everything
from ssl_kd.engine.streams import micro_batch, stage_lengths

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


def plan(
    run: RunState, cfg: Config, run_dir: RunDir, d: DatasetBundle, device: torch.device, world_size: int,
    new_stage: Callable[[int, str, StageConfig], Stage],
) -> str:  # fmt: skip
    """The dry run's text. Walks `run` through the schedule as a real run would (models built, snapshots taken, each
    stage set up through `new_stage`), without training or writing anything."""
    exp = cfg.experiment
    seed_everything(exp.seed)
    speed = "channels_last, " if exp.channels_last else ""
    speed += f"compile {exp.compile}, " if exp.compile != "no" else ""
    lines = [
        f"Experiment '{exp.name}' (seed {exp.seed}, precision {exp.precision}, {speed}{world_size} process(es))",
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
    w, s = cfg.data.augment.weak, cfg.data.augment.strong
    size = f"U[0, {s.cutout:g}]" if s.cutout_random_size else f"{s.cutout:g}"
    lines += [
        f"Data: {d.name}: {len(d.train)} train / {len(d.test)} test images, {d.num_classes} classes, {d.image_size}px",
        f"  {cfg.data.pipeline} pipeline; augment: weak = {'flip + ' if w.flip else ''}crop pad {w.crop_padding} "
        f"{w.pad_mode}; strong = "
        f"RandAugment {s.num_ops} op(s) each p={s.op_prob:g} + cutout {size} x width fill {s.cutout_fill}, "
        f"{s.order} the weak flip + crop",
    ]
    if d.info.get("metadata"):
        lines.append(f"  {d.info['metadata']}")
    lines.append("Models:")
    run.models = build_models(cfg, d.num_classes, device, d.train.fields)
    for name, m in run.models.items():
        n = sum(p.numel() for p in m.parameters())
        src = f" <- {cfg.models[name].checkpoint}" if cfg.models[name].checkpoint else ""
        lines.append(f"  {name:<12} {cfg.models[name].arch:<14} {n:>12,} params{src}")
    check_stage_files(run.models, cfg, run_dir, device)
    lines.append("Stages:")
    for i, (name, scfg) in enumerate(cfg.stages.items()):
        run.stage_index = i
        stage = new_stage(i, name, scfg)
        run.stage = stage
        if not scfg.enabled:
            lines.append(f"  {i + 1}. {name:<14} {scfg.type:<11} (disabled)")
            continue
        take_snapshots(run.models, scfg)
        stage.setup()
        total, spe = stage_lengths(stage)
        for sname in stage.streams if stage.trains else ():
            micro_batch(stage, sname, world_size)
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
    run.stage = None
    return "\n".join(lines)
