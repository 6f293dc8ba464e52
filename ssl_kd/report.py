"""Run report: PNG plots and a short report.md from a run folder, so a run can be judged without W&B; and a
results table across runs and seeds.

    python -m ssl_kd.report RUN_DIR [--out DIR]                  # default DIR: RUN_DIR/report/
    python -m ssl_kd.report RUN_DIR [RUN_DIR ...] --table [--csv FILE]

Reads `metrics.jsonl` (and `config.yaml` for stage order, types and models when present). Every `train/*` number
is plotted, so new stage types need no change here: the diagnostics a stage type declares (`Stage.plots`, e.g. the
SSL stages' mask rate, adaptive k and class thresholds) get their own plots, every other number goes into the
training-terms grid. Plots whose data is absent are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import ssl_kd.stages  # noqa: F401  (the built-in stage types and their declared plots)
from ssl_kd.config.registry import stage_types
from ssl_kd.engine.stage import Plot
from ssl_kd.errors import UserError

BASE_PLOTS = ["accuracy.png", "losses.png"]
_TOP1 = re.compile(r"^test/(.+)/top1$")


@dataclass
class Run:
    root: Path
    name: str
    stages: dict[str, dict[str, Any]]  # stage name -> its config (empty when config.yaml lacks it), in run order
    records: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)  # stages.json: each stage's length, finished

    def of(self, stage: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["stage"] == stage]

    def stop(self, stage: str) -> dict[str, Any] | None:
        """The `stop` record (NaN guard) of a stage, if training stopped there."""
        return next((r for r in self.of(stage) if r.get("kind") == "stop"), None)

    def interrupted(self, stage: str) -> tuple[int, int] | None:
        """(last logged step, total steps) of a stage that started but did not finish (nor stop): killed, or still
        running. None for a finished, stopped or never started stage, and for runs without stages.json."""
        st = self.status.get(stage)
        if not isinstance(st, dict) or st.get("finished", True) or self.stop(stage) is not None:
            return None
        steps = [r["step"] for r in self.of(stage)]
        return (max(steps) if steps else 0), int(st.get("total_steps") or 0)

    def span(self, stage: str) -> tuple[int, int] | None:
        """(first, last) global step of a stage (records carry both counters), None if it logged nothing."""
        recs = self.of(stage)
        if not recs:
            return None
        return min(r["global_step"] - r["step"] for r in recs), max(r["global_step"] for r in recs)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_run(run_dir: str | Path) -> Run:
    """Read and check a run folder; every problem is a UserError naming the file (and line)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such run folder.")
    path = root / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: not found; is {root} a run folder (python -m ssl_kd.run writes it)?")
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed line, not JSON ({e.msg}).") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("stage"), str) or not _number(rec.get("step")):
                raise UserError(f"{path}:{lineno}: malformed line, expected an object with 'stage' and 'step'.")
            rec.setdefault("global_step", rec["step"])
            records.append(rec)
    if not records:
        raise UserError(f"{path}: empty, no records (did the run log anything yet?).")

    cfg: dict[str, Any] = {}
    cfg_path = root / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{cfg_path}: not valid YAML ({e}).") from None
    stage_cfgs = cfg.get("stages") if isinstance(cfg.get("stages"), dict) else {}
    stages: dict[str, dict[str, Any]] = {n: c or {} for n, c in stage_cfgs.items() if (c or {}).get("enabled", True)}
    for r in records:  # stages missing from the config still get reported, in the order they logged
        stages.setdefault(r["stage"], {})
    name = (cfg.get("experiment") or {}).get("name") or root.resolve().name
    status: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(OSError, ValueError):  # written by the run's progress logger; older runs have none
        status = json.loads((root / "stages.json").read_text())
    for stage in status if isinstance(status, dict) else ():
        stages.setdefault(stage, {})
    return Run(root, str(name), stages, records, status if isinstance(status, dict) else {})


def series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[int], list[float]]:
    """(global steps, stage steps, values) of the records holding a finite number under key."""
    rows = [(r["global_step"], r["step"], float(r[key])) for r in records if _number(r.get(key))]
    rows = [row for row in rows if math.isfinite(row[2])]
    return [g for g, _, _ in rows], [s for _, s, _ in rows], [v for _, _, v in rows]


def eval_models(records: list[dict[str, Any]]) -> list[str]:
    """Models with a test top-1 in these records, in first-seen order."""
    seen: dict[str, None] = {}
    for r in records:
        for k in r:
            m = _TOP1.match(k)
            if m:
                seen.setdefault(m.group(1), None)
    return list(seen)


def accuracy_series(run: Run, stage: str) -> list[tuple[str, str, str]]:
    """(model, label, key) of each test top-1 curve of a stage: the EMA model and the raw one when EMA is on."""
    recs = run.of(stage)
    out = []
    for m in eval_models(recs):
        has_raw = any(f"test/{m}/raw_top1" in r for r in recs)
        out.append((m, f"{m} (EMA)" if has_raw else m, f"test/{m}/top1"))
        if has_raw:
            out.append((m, f"{m} (raw)", f"test/{m}/raw_top1"))
    return out


def declared_plots(run: Run) -> list[Plot]:
    """The plots the run's stage types declare, in stage order, each once (by name)."""
    types = stage_types()
    out: dict[str, Plot] = {}
    for cfg in run.stages.values():
        for plot in getattr(types.get(str(cfg.get("type"))), "plots", ()):
            out.setdefault(plot.name, plot)
    return list(out.values())


def all_plot_files() -> list[str]:
    """Every file a report may write (stale ones from an earlier report are removed first)."""
    names = {p.name for cls in stage_types().values() for p in getattr(cls, "plots", ())}
    return BASE_PLOTS + sorted(f"{n}.png" for n in names)


def train_keys(run: Run) -> list[str]:
    """train/* numbers (plus lr) outside the declared diagnostics: train/loss first, then by name."""
    declared = {f"train/{k}" for p in declared_plots(run) if p.kind == "lines" for k in p.keys}
    keys = {k for r in run.records for k, v in r.items() if k.startswith("train/") and _number(v)} - declared
    ordered = sorted(keys, key=lambda k: (k != "train/loss", k))
    return ordered + (["lr"] if any(_number(r.get("lr")) for r in run.records) else [])


# --------------------------------------------------------------------------------------------------- plots


def _figure(nrows: int = 1, ncols: int = 1, w: float = 7.5, h: float = 4.2) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    return fig, axes


def _color(i: int) -> str:
    return f"C{i % 10}"


def _mark_stages(ax: Any, run: Run) -> None:
    """Dotted line where each stage begins and its name on a top axis over its span, so curves read per stage."""
    spans = [(stage, run.span(stage)) for stage in run.stages if run.span(stage)]
    lo, hi = ax.get_xlim()
    for start, _ in [span for _, span in spans[1:]]:
        if lo < start < hi:
            ax.axvline(start, color="0.5", ls=":", lw=1)
    ax.set_xlim(lo, hi)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(a + b) / 2 for _, (a, b) in spans], labels=[stage for stage, _ in spans], fontsize=8)
    top.tick_params(length=0, colors="0.35")


def _per_stage_lines(ax: Any, run: Run, key: str, label_suffix: str = "", ls: str = "-") -> bool:
    drew = False
    for i, stage in enumerate(run.stages):
        x, _, y = series(run.of(stage), key)
        if x:
            ax.plot(x, y, ls, color=_color(i), marker="." if len(x) < 30 else None, label=f"{stage}{label_suffix}")
            drew = True
    return drew


def _best(y: list[float]) -> int:
    """Index of the first maximum: the runner keeps the earliest best (strict improvement)."""
    return max(range(len(y)), key=lambda i: (y[i], -i))


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def label_offsets(points: list[tuple[float, float]], xspan: float, yspan: float) -> list[tuple[int, int]]:
    """Offsets (points) of the best-value labels so that none overlaps another: a label whose star lies close to
    an earlier one's (within 6 % of the x range and 5 % of the y range) goes one line above it."""
    placed: list[tuple[float, float, int]] = []
    out = []
    for x, y in points:
        level = 0
        while any(abs(x - px) <= 0.06 * xspan and abs(y - py) <= 0.05 * yspan and lv == level for px, py, lv in placed):
            level += 1
        placed.append((x, y, level))
        out.append((4, 5 + 11 * level))
    return out


def accuracy_figure(run: Run) -> Figure | None:
    """Test top-1 per stage and model (EMA dashed against raw), each best starred and labelled."""
    fig, (ax,) = _figure()
    colors: dict[tuple[str, str], str] = {}
    bests: list[tuple[float, float]] = []
    for stage in run.stages:
        recs = run.of(stage)
        for model, label, key in accuracy_series(run, stage):
            x, _, y = series(recs, key)
            if not x:
                continue
            raw = label.endswith("(raw)")
            color = colors.setdefault((stage, model), _color(len(colors)))
            y = [100 * v for v in y]
            ax.plot(x, y, "--" if raw else "-", color=color, marker="o", ms=3, label=f"{stage}: {label}")
            b = _best(y)
            ax.plot(x[b], y[b], marker="*", ms=13, color=color, mfc="none" if raw else color, ls="none")
            bests.append((x[b], y[b]))
    if not colors:
        return None
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for (x, y), off in zip(bests, label_offsets(bests, x1 - x0, y1 - y0)):  # tiny runs: bests often coincide
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=off, fontsize=8)
    ax.plot([], [], "*", color="0.3", ms=11, ls="none", label="best")
    _mark_stages(ax, run)
    ax.set(title=f"{run.name}: test top-1", xlabel="global step", ylabel="top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_accuracy(run: Run, path: Path) -> Path | None:
    fig = accuracy_figure(run)
    return None if fig is None else _save(fig, path)


def plot_losses(run: Run, path: Path) -> Path | None:
    keys = train_keys(run)
    if not keys:
        return None
    ncols = min(3, len(keys))
    fig, axes = _figure(math.ceil(len(keys) / ncols), ncols, w=5.2, h=3.4)
    for ax, key in zip(axes, keys):
        _per_stage_lines(ax, run, key)
        _mark_stages(ax, run)
        ax.set(title=key, xlabel="global step", ylabel="learning rate" if key == "lr" else "value per log interval")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{run.name}: training terms")
    return _save(fig, path)


def plot_lines(run: Run, path: Path, keys: dict[str, str], title: str, ylabel: str) -> Path | None:
    """One panel, one line per (stage, key); keys maps a train/* key to its legend name."""
    fig, (ax,) = _figure()
    drew = False
    for (key, name), ls in zip(keys.items(), ("-", "--", ":", "-.")):
        drew |= _per_stage_lines(ax, run, key, label_suffix=f": {name}" if len(keys) > 1 else "", ls=ls)
    if not drew:
        return None
    _mark_stages(ax, run)
    ax.set(title=f"{run.name}: {title}", xlabel="global step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def last_list(run: Run, key: str) -> dict[str, tuple[int, list[float]]]:
    """Per stage, (step, values) of the last record that carries a list of numbers under key."""
    out = {}
    for r in run.records:
        t = r.get(key)
        if isinstance(t, list) and t and all(_number(v) for v in t):
            out[r["stage"]] = (r["step"], [float(v) for v in t])
    return out


def plot_bars(run: Run, path: Path, key: str, title: str, ylabel: str) -> Path | None:
    """Per stage, the last logged list under key as bars (one per class), with its mean."""
    last = last_list(run, key)
    if not last:
        return None
    fig, axes = _figure(len(last), 1, w=max(7.5, 0.25 * max(len(t) for _, t in last.values())), h=3.4)
    for ax, (stage, (step, t)) in zip(axes, last.items()):
        ax.bar(range(len(t)), t, color=_color(list(run.stages).index(stage)))
        ax.axhline(statistics.fmean(t), color="0.3", ls="--", lw=1, label=f"mean {statistics.fmean(t):.3f}")
        ax.set(title=f"{stage}: {title} at step {step}", xlabel="class", ylabel=ylabel)
        ax.set_xticks(range(len(t)) if len(t) <= 20 else range(0, len(t), max(1, len(t) // 20)))
        ax.legend(fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ markdown


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def stage_rows(run: Run) -> list[list[str]]:
    """One row per (stage, accuracy curve): type, models, steps, last / best (step) / median of last 5 top-1."""
    rows = []
    for stage, cfg in run.stages.items():
        recs = run.of(stage)
        steps = str(max(r["step"] for r in recs)) if recs else "not run"
        stop = run.stop(stage)
        if stop is not None:
            steps = f"stopped at {stop.get('first_step', stop['step'])} ({', '.join(stop.get('terms') or [])} NaN/inf)"
        cut = run.interrupted(stage)
        if cut is not None:
            steps = f"**interrupted** at step {cut[0]} of {cut[1]}"
        head = [stage, str(cfg.get("type", "?")), ", ".join(cfg.get("train") or []) or "—"]
        head += [", ".join(cfg.get("uses") or []) or "—", steps]
        curves = accuracy_series(run, stage)
        if not curves:
            rows.append(head + ["—"] * 4)
        for _, label, key in curves:
            _, s, y = series(recs, key)
            if not y:
                continue
            b = _best(y)
            rows.append(head + [label, _pct(y[-1]), f"{_pct(y[b])} (step {s[b]})", _pct(statistics.median(y[-5:]))])
    return rows


def final_terms(run: Run) -> list[str]:
    """Per stage, the last logged value of each train/* term: where the losses ended up."""
    lines = []
    for stage in run.stages:
        recs = [r for r in run.of(stage) if any(k.startswith("train/") for k in r)]
        if not recs:
            continue
        last: dict[str, Any] = {}
        for r in recs:
            last.update({k: (r["step"], v) for k, v in r.items() if k.startswith("train/") and _number(v)})
        terms = sorted(last, key=lambda k: (k != "train/loss", k))
        text = ", ".join(f"{k.removeprefix('train/')} {last[k][1]:.4g}" for k in terms)
        lines.append(f"- **{stage}** (step {max(s for s, _ in last.values())}): {text}")
    return lines


def export_lines(run: Run) -> list[str]:
    """Per `export` record (stages/pruned_export.py), each model's parameters and FLOPs before and after."""

    def change(before: float, after: float) -> str:
        return f"{before:,.0f} → {after:,.0f}" + (f" ({100 * (after - before) / before:+.1f}%)" if before else "")

    lines = []
    for r in run.records:
        if r.get("kind") != "export":
            continue
        for key in r:
            m = re.match(r"^export/(.+)/params$", key)
            if not m:
                continue
            name = m.group(1)
            v = {k: r.get(f"export/{name}/{k}") for k in ("params", "params_before", "flops", "flops_before")}
            parts = []
            for what, key in (("parameters", "params"), ("FLOPs", "flops")):
                if _number(v[key]) and _number(v[f"{key}_before"]):
                    parts.append(f"{what} {change(v[f'{key}_before'], v[key])}")
            diff = r.get(f"export/{name}/max_abs_diff")
            if _number(diff):
                parts.append(f"max |logit difference| on the check batch {diff:.2e}")
            lines.append(f"- **{r['stage']}**, model `{name}`: " + "; ".join(parts))
    return lines


def write_markdown(run: Run, images: list[Path], path: Path) -> Path:
    header = ["stage", "type", "trains", "reads", "steps", "model", "last top-1", "best top-1", "median last 5"]
    lines = [f"# Run report: {run.name}", "", f"Run folder: `{run.root}` ({len(run.records)} records)", ""]
    lines += ["## Stages", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in stage_rows(run)]
    stops = [(s, run.stop(s)) for s in run.stages if run.stop(s)]
    if stops:
        lines += ["", "## Stopped", ""]
        for stage, r in stops:
            lines.append(
                f"- **{stage}**: {r.get('reason', 'stopped')} in {', '.join(r.get('terms') or [])} (first at step "
                f"{r.get('first_step', r['step'])}); the run ended there. `--resume` continues from the last good "
                f"checkpoint."
            )
    exports = export_lines(run)
    if exports:
        lines += ["", "## Export", "", "The physically smaller network each `export` stage built.", ""]
        lines += exports
    cuts = [(s, run.interrupted(s)) for s in run.stages if run.interrupted(s)]
    if cuts:
        lines += ["", "## Interrupted", ""]
        for stage, (step, total) in cuts:
            lines.append(
                f"- **{stage}**: started but not finished; last logged step {step} of {total} (killed, or still "
                f"running). `--resume` continues from the last checkpoint."
            )
    terms = final_terms(run)
    if terms:
        lines += ["", "## Final training terms", "", "Last logged value (averaged over the log interval).", ""]
        lines += terms
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the plots and report.md of a run into out_dir (default RUN_DIR/report); return report.md's path."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name in all_plot_files():  # a plot skipped now must not survive from an earlier report
        (out / name).unlink(missing_ok=True)
    made = [plot_accuracy(run, out / "accuracy.png"), plot_losses(run, out / "losses.png")]
    for p in declared_plots(run):
        path = out / f"{p.name}.png"
        if p.kind == "bars":
            made += [plot_bars(run, path, next(iter(p.keys)), p.title, p.ylabel)]
        else:
            made += [plot_lines(run, path, {f"train/{k}": v for k, v in p.keys.items()}, p.title, p.ylabel)]
    return write_markdown(run, [p for p in made if p is not None], out / "report.md")


# ------------------------------------------------------------------------------------------------- table

# keys that differ between the seeds of one experiment (or do not change what is trained): ignored when grouping
_NOT_THE_SETTING = {
    "experiment": ("name", "seed", "output_dir", "logger", "imports"),
    "data": ("root", "num_workers", "download"),
}


def setting_key(run: Run) -> str:
    """What a run trains, without its seed and where it ran: runs with equal keys are seeds of one setting."""
    path = run.root / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(cfg, dict):
        return f"name:{run.name}"
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
    for block, keys in _NOT_THE_SETTING.items():
        for k in keys:
            (cfg.get(block) or {}).pop(k, None)
    ssl = (cfg.get("data") or {}).get("ssl")
    if isinstance(ssl, dict):
        cfg["data"]["ssl"] = {k: v for k, v in ssl.items() if k != "seed"}
    return json.dumps(cfg, sort_keys=True, default=str)


def compress_names(names: list[str]) -> str:
    """['fm_s0', 'fm_s1', 'fm_s2'] -> 'fm_s{0,1,2}'."""
    names = list(dict.fromkeys(names))
    if len(names) == 1:
        return names[0]
    pre = len(os.path.commonprefix(names))
    suf = len(os.path.commonprefix([n[pre:][::-1] for n in names]))
    middles = [n[pre : len(n) - suf] for n in names]
    return f"{names[0][:pre]}{{{','.join(middles)}}}{names[0][len(names[0]) - suf :] if suf else ''}"


def curve_stats(run: Run, stage: str, key: str) -> tuple[float, float, float] | None:
    """(last, best, median of the last 5) of one test top-1 curve, as fractions."""
    _, _, y = series(run.of(stage), key)
    if not y:
        return None
    return y[-1], y[_best(y)], statistics.median(y[-5:])


@dataclass
class TableRow:
    setting: str
    seeds: list[Any]
    stage: str
    model: str
    values: list[tuple[float, float, float]]
    stopped: int = 0


def table_rows(runs: list[Run]) -> list[TableRow]:
    """One row per (setting, stage, curve): the runs of a setting are its seeds."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(setting_key(run), []).append(run)
    rows = []
    for members in groups.values():
        label = compress_names([r.root.name for r in members])
        seeds = [_seed(r) for r in members]
        stages = list(dict.fromkeys(s for r in members for s in r.stages))
        for stage in stages:
            curves = list(dict.fromkeys((lbl, key) for r in members for _, lbl, key in accuracy_series(r, stage)))
            for lbl, key in curves:
                values = [v for r in members if (v := curve_stats(r, stage, key)) is not None]
                stopped = sum(1 for r in members if r.stop(stage))
                if values:
                    rows.append(TableRow(label, seeds, stage, lbl, values, stopped))
    return rows


def _seed(run: Run) -> Any:
    path = run.root / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return ((cfg or {}).get("experiment") or {}).get("seed")


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def table_markdown(rows: list[TableRow]) -> str:
    head = ["runs", "n", "seeds", "stage", "model", "last top-1", "best top-1", "median last 5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = f"{len(r.values)}" + (f" ({r.stopped} stopped)" if r.stopped else "")
        cols = [_fmt([v[i] for v in r.values]) for i in range(3)]
        lines.append("| " + " | ".join([r.setting, n, ",".join(map(str, r.seeds)), r.stage, r.model, *cols]) + " |")
    return "\n".join(lines) + "\n\nTest top-1 in %, mean ± sample std over the runs of a setting (its seeds).\n"


def table_csv(rows: list[TableRow], path: Path) -> Path:
    head = ["runs", "n", "stopped", "seeds", "stage", "model"]
    head += [f"{m}_{s}" for m in ("last", "best", "median5") for s in ("mean", "std")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in rows:
            stats = []
            for i in range(3):
                mean, std = _mean_std([v[i] for v in r.values])
                stats += [f"{100 * mean:.4f}", "" if std is None else f"{100 * std:.4f}"]
            w.writerow([r.setting, len(r.values), r.stopped, " ".join(map(str, r.seeds)), r.stage, r.model, *stats])
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssl_kd.report", description="Plots and report.md of a run; a results table across runs."
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) (each holds metrics.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="output folder of a single run's report (default RUN_DIR/report)")
    parser.add_argument(
        "--table", action="store_true", help="print a markdown table: mean ± std of last / best / median-of-last-5 "
        "test top-1 per setting, stage and model (runs whose configs differ only in seed and folder are grouped)"
    )  # fmt: skip
    parser.add_argument("--csv", metavar="FILE", help="with --table: also write the table as CSV")
    args = parser.parse_args(argv)
    try:
        if args.table or args.csv:
            rows = table_rows([load_run(d) for d in args.run_dirs])
            if not rows:
                raise UserError(f"{', '.join(args.run_dirs)}: no test top-1 in any of these runs (no evaluation yet).")
            print(table_markdown(rows))
            if args.csv:
                try:
                    print(f"CSV: {table_csv(rows, Path(args.csv))}")
                except OSError as e:
                    raise UserError(f"--csv: cannot write {args.csv} ({e.strerror}).") from None
            return 0
        if args.out and len(args.run_dirs) > 1:
            raise UserError("--out takes one RUN_DIR; each of several runs gets its report in RUN_DIR/report.")
        for d in args.run_dirs:
            print(f"Report: {make_report(d, args.out)}")
    except UserError as e:
        print(f"ssl_kd: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
