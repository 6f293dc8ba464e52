"""`--dry-run`: validate data, models and every stage's set-up without training, and describe what would run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_kd.config.registry import stage_types
from ssl_kd.engine.build import build_models
from ssl_kd.engine.checkpoint import load_checkpoint
from ssl_kd.engine.seed import seed_everything
from ssl_kd.engine.streams import micro_batch, stage_lengths

if TYPE_CHECKING:
    from ssl_kd.engine.runner import Runner


def plan(runner: Runner) -> str:
    cfg = runner.cfg
    exp = cfg.experiment
    seed_everything(exp.seed)
    d = runner.data
    lines = [
        f"Experiment '{exp.name}' (seed {exp.seed}, precision {exp.precision}, {runner.world_size} process(es))",
        f"  run folder: {runner.run_dir.root}",
        f"Data: {d.name}: {len(d.train)} train / {len(d.test)} test images, {d.num_classes} classes, {d.image_size}px",
    ]
    if d.info.get("metadata"):
        lines.append(f"  {d.info['metadata']}")
    lines.append("Models:")
    runner.models = build_models(cfg, d.num_classes, runner.device, d.train.fields)
    for name, m in runner.models.items():
        n = sum(p.numel() for p in m.parameters())
        src = f" <- {cfg.models[name].checkpoint}" if cfg.models[name].checkpoint else ""
        lines.append(f"  {name:<12} {cfg.models[name].arch:<14} {n:>12,} params{src}")
    lines.append("Stages:")
    types = stage_types()
    for i, (name, scfg) in enumerate(cfg.stages.items()):
        runner.stage_index = i
        stage = types[scfg.type](name, scfg, runner)
        runner.stage = stage
        if not scfg.enabled:
            lines.append(f"  {i + 1}. {name:<14} {scfg.type:<11} (disabled)")
            continue
        if scfg.init.mode == "checkpoint":
            load_checkpoint(scfg.init.path, f"stages.{name}.init.path")
        stage.setup()
        total, spe = stage_lengths(stage)
        for sname in stage.streams if stage.trains else ():
            micro_batch(stage, sname, runner.world_size)
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
        lines.append(" ".join(parts))
    runner.stage = None
    return "\n".join(lines)
