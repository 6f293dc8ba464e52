"""CLI: python -m ssl_kd.run CONFIG [key=value | --key=value ...] [--import MODULE] [--resume] [--dry-run]

Overrides are dotted YAML paths; values parse like a W&B sweep agent renders them (1e-05, None, False, [1,2]).
The CLI wins over the YAML. Mistakes in user input print one message and exit 2, without a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

_STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}

USAGE = """usage: python -m ssl_kd.run CONFIG [key=value | --key=value ...] [--import MODULE] [--resume] [--dry-run]

  CONFIG           a YAML file (configs/quickstart.yaml), or an earlier run: runs/<name>/config.yaml or runs/<name>
  key=value        override any config value by its dotted path, e.g. stages.teacher.optimizer.lr=0.01
  --key=value      the same (the form a W&B sweep agent sends with ${args})
  --import MODULE  import a module (my_pkg.models) or a .py file first, so the models / stage types it registers
                   can be named in the config (adds to experiment.imports; may be repeated)
  --resume         continue the run exactly from its checkpoints/last.pt: the run folder holding CONFIG when CONFIG
                   is a run's config.yaml, else experiment.output_dir (runs/<name>); the modules its
                   experiment.imports lists are not imported unless given again with --import
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
    if cfg.experiment.output_dir is None:  # one folder per sweep run, beside runs/<name> (never inside a run folder)
        sweep = os.environ["WANDB_SWEEP_ID"]
        out.insert(0, ("experiment.output_dir", f"runs/{cfg.experiment.name}-sweep-{sweep}/{run.id}"))
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
    # --resume reads a run folder's config.yaml: only the user's own --import runs code
    cfg, _ = resolve_config(config, overrides, args.imports, yaml_imports=not args.resume)
    extra = sweep_overrides(cfg)
    if extra:  # the command line still wins
        cfg, _ = resolve_config(config, extra + overrides, args.imports, yaml_imports=not args.resume)
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
        from ssl_kd.engine.resources import choose_speed, device_type_here

        precision = choose_speed(cfg.experiment.precision, cfg.experiment.channels_last, device_type_here()).precision
        accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
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
    from_checkpoint = _claim(run_dir, args.resume, accelerator, resolved)
    try:
        if accelerator.is_main_process and not from_checkpoint:  # a new run, or one restarted from step 0
            if args.resume:
                print(f"--resume: {run_dir.root} stopped before its first checkpoint; starting it again from step 0.")
                run_dir.truncate_metrics(0)
            run_dir.write_config(resolved)
        runner = make_runner(cfg, run_dir, resolved, accelerator, resume=from_checkpoint)
        with runner.stop_requests:
            runner.run()
        _close_process_group()
    finally:
        run_dir.unlock()
    return 0


def _close_process_group() -> None:
    """Under a launcher, end the process group before the interpreter does: left to interpreter teardown, gloo's
    threads could be destroyed while still joinable, aborting a rank at exit (std::terminate)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def _claim(run_dir, resume: bool, accelerator, resolved: dict[str, Any]) -> bool:
    """Make the run folder this process's: create it, take its lock (every rank learns whether rank 0 got it),
    remove what killed writers left, and check it may start (or resume) here. Returns whether a checkpoint resumes."""
    import yaml
    from accelerate.utils import broadcast_object_list

    from ssl_kd.engine.checkpoint_io import remove_orphans
    from ssl_kd.engine.resume import check_compatible
    from ssl_kd.errors import UserError

    if not run_dir.root.is_dir():  # a mistake (e.g. --resume of nothing) leaves no folder behind
        run_dir.check_resumable() if resume else run_dir.check_new()
    run_dir.create()  # every rank: a folder that cannot be made is one clear error on each, not a hang
    refused = [run_dir.lock() if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(refused)
    if refused[0]:
        raise UserError(refused[0])
    try:
        if accelerator.is_main_process:
            left = remove_orphans(run_dir.root)
            if left:
                print(f"{run_dir.root}: removed {len(left)} unfinished write(s) of a killed run ({left[0].name}, ...).")
        # under the lock: what the folder holds cannot change until this process ends
        from_checkpoint = run_dir.check_resumable() if resume else run_dir.check_new()
        if resume and not from_checkpoint and run_dir.config.is_file():  # starting again: under the same config
            check_compatible(yaml.safe_load(run_dir.config.read_text()), resolved, str(run_dir.config), started=[])
        accelerator.wait_for_everyone()
    except BaseException:
        run_dir.unlock()
        raise
    return bool(from_checkpoint)


def main(argv: list[str] | None = None) -> int:
    from ssl_kd.errors import RunInterrupted, TrainingStopped, UserError

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
    except RunInterrupted as e:
        print(f"ssl_kd: {e}", file=sys.stderr)
        return 128 + e.signum
    except OSError as e:  # the disk filled up, a quota, a file-size limit, the folder turned read-only
        if e.errno not in _STORAGE_ERRORS:
            raise
        print(f"ssl_kd: stopped: cannot write {e.filename or 'the run folder'}: {e.strerror}. Nothing already "
              f"written was changed; fix the cause, then continue with --resume.", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        print("ssl_kd: interrupted; continue with --resume (from the last checkpoint).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
