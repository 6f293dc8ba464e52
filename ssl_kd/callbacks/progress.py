"""Console output: a tqdm bar per stage (it/s, ETA, main terms), evaluation lines and the final summary; and
`stages.json` in the run folder (each stage's length and whether it finished), so the report can tell a stage
that was interrupted from one that ran to its end."""

from __future__ import annotations

import json
import os
import sys

from tqdm.auto import tqdm

from ssl_kd.engine.callback import Callback, CallbackOrder
from ssl_kd.engine.resources import launch_mismatch

STATUS_FILE = "stages.json"


def write_stage_status(root, stage: str, total_steps: int, finished: bool) -> None:
    """Record in `<run>/stages.json` that `stage` (of `total_steps`) started, or finished."""
    path = root / STATUS_FILE
    try:
        status = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        status = {}
    status[stage] = {"total_steps": total_steps, "finished": finished}
    tmp = path.with_name(f".{STATUS_FILE}.tmp-{os.getpid()}")
    try:  # best effort: a folder that cannot be written is reported by the checkpoint that follows
        tmp.write_text(json.dumps(status, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def bar_keys(stage_type: type, cfg) -> list[str]:
    """The terms the bar shows: the total loss, then the stage type's `progress_keys`, or by default its weighted
    loss terms in their `loss_weights` order and the first diagnostic it declares a plot for (the mask rate)."""
    declared = getattr(stage_type, "progress_keys", None)
    if declared is not None:
        return ["loss", *declared]
    weighted = [k for k, w in (getattr(cfg, "loss_weights", None) or {}).items() if w][:4]
    diagnostic = [next(iter(p.keys)) for p in getattr(stage_type, "plots", ()) if p.kind == "lines" and p.keys][:1]
    return list(dict.fromkeys(["loss", *weighted, *diagnostic]))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


class ProgressLogger(Callback):
    order = CallbackOrder.LOGGER + 1

    def __init__(self, bar: bool = True) -> None:
        self.show_bar = bar
        self.bar: tqdm | None = None
        self.keys: list[str] = ["loss"]

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def on_experiment_start(self, runner) -> None:
        """The run header: the processes that run, and the workers and threads each uses; a warning when the
        launcher asked for more processes than run."""
        if not runner.is_main:
            return
        n = runner.world_size
        resources = getattr(runner, "resources", None)
        machine = f"; {resources.describe()}" if resources is not None else ""
        speed = getattr(runner, "speed", None)
        numerics = f"\n  numerics: {speed.describe(runner.device.type)}" if speed is not None else ""
        name = runner.cfg.experiment.name
        self._print(f"Experiment '{name}': {n} process(es) on {runner.device.type}{machine}{numerics}")
        warning = launch_mismatch(n)
        if warning is not None:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)

    def on_stage_start(self, runner) -> None:
        if not runner.is_main:
            return
        stage = runner.stage
        n = len(runner.cfg.stages)
        prog = stage.progress
        write_stage_status(runner.run_dir.root, stage.name, prog.total_steps, finished=False)
        self.keys = bar_keys(type(stage), stage.cfg)
        head = f"[{runner.stage_index + 1}/{n}] stage '{stage.name}' ({stage.type_name})"
        trains = f"trains {stage.cfg.train}" if stage.cfg.train else ""
        uses = f"reads {stage.cfg.uses}" if stage.cfg.uses else ""
        self._print(f"{head}: {prog.total_steps} steps {' '.join(x for x in (trains, uses) if x)}".rstrip())
        if self.show_bar and prog.total_steps and sys.stderr.isatty():
            self.bar = tqdm(
                total=prog.total_steps, initial=prog.step, desc=stage.name, dynamic_ncols=True, leave=False,
                mininterval=0.5, file=sys.stderr,
            )  # fmt: skip

    def on_step_end(self, runner, terms) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, runner, record) -> None:
        if record.get("kind") == "train" and self.bar is not None:
            self.bar.set_postfix(self.postfix(record), refresh=False)
        elif record.get("kind") == "stop":
            self._close()
            terms = ", ".join(record.get("terms") or [])
            self._print(f"  stage '{record['stage']}' stopped: {record['reason']} in {terms} "
                        f"(first at step {record.get('first_step')})")  # fmt: skip
            self.summary(runner, stopped=record)
        elif record.get("kind") == "eval":
            parts = []
            for k, v in record.items():
                if k.startswith("test/") and k.endswith("top1"):
                    parts.append(f"{k.removeprefix('test/')} {_pct(v)}")
            best = [v for k, v in record.items() if k.startswith("best/")]
            tail = f" (best {_pct(best[0])})" if best else ""
            self._print(f"  step {record['step']}: " + ", ".join(parts) + tail)

    def postfix(self, record: dict) -> dict[str, str]:
        """The bar's terms of one train record (`bar_keys`, those it holds), then the learning rate."""
        keys = [f"train/{k}" for k in self.keys if f"train/{k}" in record]
        keys = keys or [k for k in record if k.startswith("train/")][:4]
        post = {k.removeprefix("train/"): f"{record[k]:.4g}" for k in keys}
        if "lr" in record:
            post["lr"] = f"{record['lr']:.3g}"
        return post

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_stage_end(self, runner) -> None:
        self._close()
        if not runner.is_main:
            return
        write_stage_status(runner.run_dir.root, runner.stage.name, runner.stage.progress.total_steps, finished=True)
        res = runner.results.get(runner.stage.name)
        if res:
            m = res["model"]
            self._print(
                f"  stage '{runner.stage.name}' done: {m} test top-1 {_pct(res['last'].get(f'{m}/top1'))} "
                f"(best {_pct(res['best_top1'])} at step {res['best_step']})"
            )

    def on_experiment_end(self, runner) -> None:
        if runner.is_main:
            self.summary(runner)

    def summary(self, runner, stopped: dict | None = None) -> None:
        """Each finished stage's test top-1, and the stage a stop (NaN guard) ended the run in."""
        lines = ["", "Summary (test top-1):"]
        for name, res in runner.results.items():
            m = res["model"]
            lines.append(
                f"  {name:<20} {res['type']:<12} {m:<12} last {_pct(res['last'].get(f'{m}/top1')):>8}  "
                f"best {_pct(res['best_top1']):>8}"
            )
        if stopped is not None:
            stage = runner.stage
            terms = ", ".join(stopped.get("terms") or [])
            lines.append(
                f"  {stopped['stage']:<20} {stage.type_name if stage else '?':<12} stopped at step "
                f"{stopped.get('first_step')}: {stopped['reason']} in {terms}"
            )
        lines.append(f"Run folder: {runner.run_dir.root}")
        print("\n".join(lines), flush=True)
