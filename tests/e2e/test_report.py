"""The run report: plots and report.md from a real quickstart run and from a hand-written SSL metrics.jsonl,
and one clear message (exit 2, no traceback) for a bad run folder."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys

import pytest
import yaml
from helpers import CONFIGS, ROOT, run_cli

from ssl_kd.report import main, make_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SSL_PNGS = ["pseudo_labels.png", "adaptive_k.png", "threshold.png", "class_thresholds.png"]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert len(data) > 10_000, f"{path.name} is suspiciously small ({len(data)} bytes)"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 400 and height >= 300


def read_records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def best_of(records, stage, key):
    """(best value in %, its step): the first maximum, as the runner keeps it."""
    evals = [(r[key], r["step"]) for r in records if r["stage"] == stage and key in r]
    best = max(v for v, _ in evals)
    return f"{100 * best:.2f}%", next(s for v, s in evals if v == best)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report_quick") / "run"
    short = [f"stages.{s}.{k}" for s in ("teacher", "distill") for k in ("epochs=null", "iters=20", "eval.every=10")]
    ema = ["stages.teacher.ema.enabled=true", "stages.teacher.ema.decay=0.9"]  # EMA and raw curves
    log = ["experiment.logger.log_every=5", "experiment.logger.progress=false"]
    rc = run_cli(CONFIGS / "quickstart.yaml", *short, *ema, *log, f"experiment.output_dir={out}")
    assert rc == 0
    return out


def write_ssl_run(run_dir):
    """A two-stage SSL run as the FlexMatch / FullMatch stages log it, plus unknown keys of every shape."""
    run_dir.mkdir(parents=True)
    stages = {
        "flex": {"type": "flexmatch", "train": ["student"], "uses": [], "ema": {"enabled": True}},
        "full": {"type": "fullmatch", "train": ["student"], "uses": [], "ema": {"enabled": False}},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"experiment": {"name": "ssl_fake"}, "stages": stages}))
    records, offset = [], 0
    for stage in stages:
        best = 0.0
        for step in range(10, 201, 10):
            t = step / 200
            rec = {"stage": stage, "step": step, "global_step": offset + step, "epoch": step // 50, "kind": "train"}
            rec.update({"train/loss": 2 * math.exp(-3 * t), "train/sup": math.exp(-3 * t), "train/unsup": 0.5 * t})
            rec.update({"train/mask": 0.3 + 0.6 * t, "train/pl_acc": 0.5 + 0.4 * t, "train/threshold": 0.5 + 0.4 * t})
            rec.update({"lr": 0.03 * (1 - t), "it_s": 100.0, "train/grad_norm": 1 + t, "note": "unknown text"})
            if stage == "full":
                rec.update({"train/eml": 0.2 * t, "train/anl": 0.1 + 0.1 * t, "train/k": 1 + round(8 * t)})
            records.append(rec)
            if step % 50 == 0:  # eval every 50 steps; the last is not the best, so best != last is checked
                top1 = 0.6 + 0.3 * t - (0.1 if step == 200 else 0)
                ev = {"stage": stage, "step": step, "global_step": offset + step, "epoch": step // 50, "kind": "eval"}
                ev.update({"test/student/top1": top1, "test/student/top5": 0.99, "test/student/loss": 1 - top1})
                if stage == "flex":
                    ev.update({"test/student/raw_top1": top1 - 0.02, "test/student/raw_top5": 0.98})
                    ev["class_thresholds"] = [0.5 + 0.04 * c * t for c in range(10)]
                best = max(best, top1)
                ev["best/student/top1"] = best
                ev["extra_list"] = [1, 2, 3]
                records.append(ev)
        offset += 200
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_report_on_quickstart_run(quick_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adaptive_k.png").write_bytes(b"stale plot from an earlier report")
    md_path = make_report(quick_run, out)
    assert md_path == out / "report.md"
    for name in ["accuracy.png", "losses.png"]:
        assert_png(out / name)
    for name in SSL_PNGS:
        assert not (out / name).exists(), f"{name} drawn without SSL data (or left over)"

    md = md_path.read_text()
    records = read_records(quick_run)
    assert "# Run report: quickstart" in md
    for stage, model, stype in [("teacher", "teacher", "supervised"), ("distill", "student", "kd")]:
        assert f"| {stage} | {stype} |" in md
        key = f"test/{model}/top1"
        best, step = best_of(records, stage, key)
        label = f"{model} (EMA)" if stage == "teacher" else model
        row = next(line for line in md.splitlines() if line.startswith(f"| {stage} |") and f"| {label} |" in line)
        assert f"| {best} (step {step}) |" in row
    raw_best, raw_step = best_of(records, "teacher", "test/teacher/raw_top1")
    assert "| teacher (raw) |" in md and f"{raw_best} (step {raw_step})" in md
    assert "![accuracy](accuracy.png)" in md and "![losses](losses.png)" in md
    assert "kd " in md  # final value of the KD term


def test_report_on_ssl_metrics(tmp_path):
    run_dir = write_ssl_run(tmp_path / "ssl")
    assert main([str(run_dir)]) == 0  # default output folder
    out = run_dir / "report"
    for name in ["accuracy.png", "losses.png", *SSL_PNGS]:
        assert_png(out / name)
        assert f"({name})" in (out / "report.md").read_text()

    md = (out / "report.md").read_text()
    records = read_records(run_dir)
    assert "# Run report: ssl_fake" in md
    for stage, label, key in [
        ("flex", "student (EMA)", "test/student/top1"),
        ("flex", "student (raw)", "test/student/raw_top1"),
        ("full", "student", "test/student/top1"),
    ]:
        best, step = best_of(records, stage, key)
        assert step == 150  # not the last eval
        row = next(line for line in md.splitlines() if line.startswith(f"| {stage} |") and f"| {label} |" in line)
        assert f"| {best} (step {step}) |" in row
        last = [r[key] for r in records if r["stage"] == stage and key in r][-1]
        assert f"| {100 * last:.2f}% |" in row
    final = next(line for line in md.splitlines() if line.startswith("- **full**"))
    for term in ["loss", "sup", "unsup", "eml", "anl", "mask", "pl_acc", "k", "threshold", "grad_norm"]:
        assert f" {term} " in final


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_folder", "no such run folder"),
        ("no_metrics", "metrics.jsonl: not found"),
        ("empty", "metrics.jsonl: empty"),
        ("malformed", "metrics.jsonl:2: malformed line"),
        ("not_a_record", "metrics.jsonl:1: malformed line"),
    ],
)
def test_bad_run_folder_exits_2(case, expected, tmp_path, capsys):
    run_dir = tmp_path / "run"
    if case != "no_folder":
        run_dir.mkdir()
    good = json.dumps({"stage": "s", "step": 1, "global_step": 1, "kind": "train", "train/loss": 1.0})
    text = {"empty": "\n", "malformed": good + '\n{"stage": "s", "step": 2,\n' + good + "\n", "not_a_record": "[1]\n"}
    if case in text:
        (run_dir / "metrics.jsonl").write_text(text[case])
    assert main([str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(run_dir) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow  # a fresh interpreter for `python -m ssl_kd.report`; main()'s exit codes and messages are held
# in-process above
def test_cli_module_exit_code(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("not json\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ssl_kd.report", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "metrics.jsonl:1: malformed line" in proc.stderr and "Traceback" not in proc.stderr
