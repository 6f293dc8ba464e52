"""CLI: python -m ssl_kd.run CONFIG [key=value | --key=value ...] [--import MODULE] [--resume] [--dry-run]

Overrides are dotted YAML paths; values parse like a W&B sweep agent renders them (1e-05, None, False, [1,2]).
The CLI wins over the YAML. Mistakes in user input print one message and exit 2, without a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

USAGE = """usage: python -m ssl_kd.run CONFIG [key=value | --key=value ...] [--import MODULE] [--resume] [--dry-run]

  CONFIG           a YAML file (configs/quickstart.yaml), or an earlier run: runs/<name>/config.yaml or runs/<name>
  key=value        override any config value by its dotted path, e.g. stages.teacher.optimizer.lr=0.01
  --key=value      the same (the form a W&B sweep agent sends with ${args})
  --import MODULE  import a module (my_pkg.models) or a .py file first, so the models / stage types it registers
                   can be named in the config (adds to experiment.imports; may be repeated)
  --resume         continue the run exactly from its checkpoints/last.pt: the run folder holding CONFIG when CONFIG
                   is a run's config.yaml, else experiment.output_dir (runs/<name>)
  --dry-run        validate config, data and models, print the plan, and exit without training
"""


class Args(NamedTuple):
    config: str
    items: list[str]
    resume: bool
    dry: bool
    imports: list[str]


def parse_argv(argv: list[str]) -> Args:
    from ssl_kd.errors import UserError

    config, items, resume, dry, imports = None, [], False, False, []
    args = iter(argv)
    for a in args:
        if a in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if a == "--resume":
            resume = True
        elif a == "--dry-run":
            dry = True
        elif a == "--import":
            module = next(args, None)
            if module is None or module.startswith("-"):
                raise UserError("--import needs a module name or a .py file (e.g. --import my_pkg.models).")
            imports.append(module)
        elif a.startswith("--import="):
            imports.append(a.split("=", 1)[1])
        elif "=" in a:
            items.append(a)
        elif a.startswith("-"):
            raise UserError(
                f"unknown option '{a}'. Options: --resume, --dry-run, --import MODULE, and overrides as --key=value."
            )
        elif config is None:
            config = a
        else:
            raise UserError(f"unexpected argument '{a}': give one CONFIG file, then overrides as key=value.")
    if config is None:
        raise UserError("no CONFIG given.\n" + USAGE)
    return Args(config, items, resume, dry, imports)


def config_file(arg: str) -> Path:
    """CONFIG as given, or `<folder>/config.yaml` when CONFIG is a run folder."""
    path = Path(arg)
    return path / "config.yaml" if path.is_dir() and (path / "config.yaml").is_file() else path


def run_folder(config: Path, cfg, resume: bool) -> Path:
    """Where the run lives. `--resume runs/x/config.yaml` resumes the folder holding that file (wherever it was
    copied to, from any directory); otherwise experiment.output_dir, default runs/<experiment.name>."""
    here = config.parent
    is_run = (here / "checkpoints").is_dir() or (here / "metrics.jsonl").exists()
    if resume and config.name == "config.yaml" and is_run:
        return here
    return Path(cfg.experiment.output_dir or Path("runs") / cfg.experiment.name)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def sweep_overrides(cfg) -> list[tuple[str, Any]]:
    """Under a W&B sweep agent, wandb.config (dotted keys, unflattened here) applies as overrides too.

    Only rank 0 starts W&B; the agent's ${args} already give every rank the same values on the command line.
    """
    if not os.environ.get("WANDB_SWEEP_ID") or os.environ.get("RANK", "0") != "0":
        return []
    import wandb

    from ssl_kd.config.schema import WandbConfig

    w = cfg.experiment.logger.wandb or WandbConfig()
    run = wandb.init(project=w.project, entity=w.entity, mode=w.mode, group=w.group, tags=w.tags)
    out = _flatten({k: v for k, v in dict(run.config).items() if not k.startswith("_")})
    if cfg.experiment.logger.wandb is None:
        out.insert(0, ("experiment.logger.wandb", {}))
    if cfg.experiment.output_dir is None:  # one folder per sweep run, never on top of another
        out.insert(0, ("experiment.output_dir", f"runs/{cfg.experiment.name}/sweep-{run.id}"))
    return out


def make_runner(cfg, run_dir, resolved, accelerator, *, resume: bool = False, dry_run: bool = False, extra=()):
    """The runner with ssl_kd's callbacks: the loggers for the whole run, and every stage's standard callbacks."""
    import ssl_kd.callbacks as callbacks
    import ssl_kd.stages  # noqa: F401  (the built-in stage types, also when ssl_kd is not installed)
    from ssl_kd.engine import Runner

    exp_cbs = [] if dry_run else [*callbacks.experiment_callbacks(cfg), *extra]
    return Runner(
        cfg, run_dir, resolved, resume=resume, accelerator=accelerator, callbacks=exp_cbs,
        stage_callbacks=callbacks.stage_callbacks, dry_run=dry_run,
    )  # fmt: skip


def _main(argv: list[str]) -> int:
    from accelerate import Accelerator

    import ssl_kd.stages  # noqa: F401  (registers the built-in stage types before the config is validated)
    from ssl_kd.config import parse_overrides, resolve_config, resolved_dict
    from ssl_kd.data import dataset_info
    from ssl_kd.engine import RunDir
    from ssl_kd.errors import UserError

    args = parse_argv(argv)
    config = config_file(args.config)
    overrides = parse_overrides(args.items)
    cfg, _ = resolve_config(config, overrides, args.imports)
    extra = sweep_overrides(cfg)
    if extra:
        cfg, _ = resolve_config(config, extra + overrides, args.imports)  # the command line still wins
    resolved = resolved_dict(cfg)
    run_dir = RunDir(run_folder(config, cfg, args.resume))
    dataset_info(cfg.data)  # data must be findable before anything is written
    for st in cfg.stages.values():  # and every stage's own dataset
        if st.enabled and st.data is not None:
            dataset_info(st.data)

    try:
        import torch
        from accelerate.state import AcceleratorState

        # a second run in the same process (tests, notebooks) may change precision; the process group stays
        AcceleratorState._reset_state(reset_partial_state=False)
        # without a GPU, accelerate only forms a (gloo) process group when told it runs on CPU
        accelerator = Accelerator(mixed_precision=cfg.experiment.precision, cpu=not torch.cuda.is_available())
    except ValueError as e:
        raise UserError(f"experiment.precision: '{cfg.experiment.precision}' is not usable here ({e}). "
                        f"Use 'no' or 'bf16' on CPU.") from None  # fmt: skip
    if accelerator.is_main_process and not args.dry:  # the dry run lists them under each stage
        for name, notes in cfg._deprecations.items():
            for note in notes:
                print(f"deprecated: stages.{name}: {note}", file=sys.stderr)
    if args.dry:
        runner = make_runner(cfg, run_dir, resolved, accelerator, dry_run=True)
        if accelerator.is_main_process:
            print(runner.plan())
        return 0
    make_runner(cfg, run_dir, resolved, accelerator, dry_run=True).preflight()  # every check, before any write
    if args.resume:
        run_dir.check_resumable()
    else:
        run_dir.check_new()
    run_dir.create()  # every rank: a folder that cannot be made is one clear error on each, not a hang
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not args.resume:
        run_dir.write_config(resolved)
    make_runner(cfg, run_dir, resolved, accelerator, resume=args.resume).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    from ssl_kd.errors import TrainingStopped, UserError

    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # every rank sees the same mistake; say it once
            print(f"ssl_kd: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"ssl_kd: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ssl_kd: interrupted; continue with --resume (from the last checkpoint).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
