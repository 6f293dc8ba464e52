"""The GPU suite's CPU-checkable pieces: the markdown table writer (benchmarks/gpu_suite_table.py) and the aim / wandb
stand-ins that let semilearn import where they are missing (benchmarks/_usb.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


META = {"device": "NVIDIA H100 80GB HBM3", "cuda": True, "torch": "2.11.0", "arch": "wrn_28_2", "batch": 64,
        "uratio": 7, "images_per_step": 960, "data": "real CIFAR-10", "steps": 60, "warmup": 20, "precision": "bf16",
        "channels_last": True, "cpu_count": 16, "date": "2026-12-06 02:00 UTC"}  # fmt: skip


def _row(kind, s, **kw):
    row = {"kind": kind, "pipeline": None, "compile": None, "workers": None, "s_per_step": s, "it_s": 1 / s,
           "images_s": 960 / s, "hours_2_20": 2**20 * s / 3600, "gpu_busy": None, "host_syncs": None,
           "syncs_per_step": None, "x_usb": None}  # fmt: skip
    row.update(kw)
    return row


def test_table_writer_gives_the_expected_markdown():
    """Rows from two throughput JSON files (12 and 4 workers, in the order throughput.py writes them) come out as one
    table, grouped USB / compute / host pipeline / end to end, most workers first, host before device, eager before
    compiled; a failed row says so; numbers are formatted by hand below, not by the writer."""
    table = _load("gpu_suite_table")
    w12 = {"meta": META, "rows": [
        _row("usb", 0.0625, workers=12, amp=True, gpu_busy=55.2, note="aim / wandb missing: empty stand-ins installed, "
             "USB's loggers are not used"),
        _row("host pipeline alone", 0.01, pipeline="host", workers=12),
        _row("compute alone", 0.0125, compile="reduce-overhead"),
        _row("ssl_kd", 0.025, pipeline="device", compile="no", workers=12, gpu_busy=71.4, host_syncs=0,
             syncs_per_step=0.0, syncs_off_log_steps=0, x_usb=2.5),
        _row("ssl_kd", 0.015625, pipeline="host", compile="reduce-overhead", workers=12, gpu_busy=90.0, host_syncs=3,
             syncs_per_step=0.05, syncs_off_log_steps=1, x_usb=4.0),
    ]}  # fmt: skip
    w4 = {"meta": META, "rows": [
        _row("usb", 0.0625, workers=4, amp=True),
        {**_row("ssl_kd", 1.0, pipeline="device", compile="default", workers=4), "s_per_step": None, "it_s": None,
         "error": "RuntimeError: CUDA out of memory | x"},
    ]}  # fmt: skip
    text = table.render([w12, w4], [("augment_fidelity", 0, "weak  max 0.0000\nstrong  max 0.0000"),
                                    ("augment_cost", None, "")], title="T")  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "# T"
    assert "CPU dry run" not in text  # a CUDA run carries no CPU label
    assert lines[2] == ("- NVIDIA H100 80GB HBM3, torch 2.11.0, wrn_28_2, 960 images/step (batch 64 + 2 x 448), real "
                        "CIFAR-10, precision bf16, channels_last, 20 warm-up + 60 timed steps, 16 cores")  # fmt: skip
    assert lines[3] == "- measured 2026-12-06 02:00 UTC, 2026-12-06 02:00 UTC"
    start = lines.index("| run | data path | compile | workers | it/s | images/s | 2^20 it | GPU busy | "
                        "host syncs/step (off log steps) | x USB |")  # fmt: skip
    assert lines[start + 1] == "|---|---|---|---|---|---|---|---|---|---|"
    assert lines[start + 2 : start + 9] == [
        "| USB FixMatch (semilearn), amp | - | - | 12 | 16.0 | 15,360 | 18.2 h | 55 % | - | - |",
        "| USB FixMatch (semilearn), amp | - | - | 4 | 16.0 | 15,360 | 18.2 h | - | - | - |",
        "| compute alone | - | reduce-overhead | - | 80.0 | 76,800 | 3.6 h | - | - | - |",
        "| host pipeline alone | host | - | 12 | 100.0 | 96,000 | 2.9 h | - | - | - |",
        "| ssl_kd | host | reduce-overhead | 12 | 64.0 | 61,440 | 4.6 h | 90 % | 0.05 (1) | 4.0x |",
        "| ssl_kd | device | eager | 12 | 40.0 | 38,400 | 7.3 h | 71 % | 0 (0) | 2.5x |",
        "| ssl_kd | device | default | 4 | failed: RuntimeError: CUDA out of memory / x |  |  |  |  |  |",
    ]
    assert lines[start + 9] == ""
    assert "USB: aim / wandb missing: empty stand-ins installed, USB's loggers are not used." in lines
    assert "**augment_fidelity**: passed (exit 0)" in lines
    assert "**augment_cost**: skipped" in lines
    assert "```\nweak  max 0.0000\nstrong  max 0.0000\n```" in text


def test_table_of_a_cpu_run_says_it_is_a_dry_run(tmp_path):
    """The writer's CLI on a CPU run's JSON: the file starts with the dry-run label; a missing JSON (a call cut off
    before its first row) is reported, not fatal."""
    doc = {"meta": {**META, "device": "CPU (2 cores, no GPU: CPU numbers)", "cuda": False},
           "rows": [_row("ssl_kd", 0.5, pipeline="host", compile="no", workers=2)]}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(doc))
    out = tmp_path / "t.md"
    res = subprocess.run([sys.executable, str(BENCH / "gpu_suite_table.py"), str(out), str(tmp_path / "a.json"),
                          str(tmp_path / "missing.json"), "--check", f"fid={tmp_path / 'none.log'}:3"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "missing.json: missing" in res.stderr
    text = out.read_text()
    assert "**CPU dry run: this checks that the suite runs end to end; its numbers are not speed figures.**" in text
    assert "| ssl_kd | host | eager | 2 | 2.00 | 1,920 | 145.6 h | - | - | - |" in text
    assert "**fid**: FAILED (exit 3)" in text


_PROBE = """
import importlib.util, json, sys
sys.path.insert(0, {bench!r})
{hide}
import _usb
stood = _usb.install_logger_standins()
import aim, wandb
out = {{"stood": stood, "message": _usb.standin_message(stood),
       "aim_standin": getattr(aim, "__stand_in__", False), "wandb_standin": getattr(wandb, "__stand_in__", False),
       "wandb_real": getattr(wandb, "REAL", False), "spec": importlib.util.find_spec("wandb") is not None}}
try:
    wandb.init
except AttributeError as exc:
    out["use"] = str(exc)
print(json.dumps(out))
"""


def _probe(hide: str, pythonpath: Path | None = None) -> dict:
    env = None
    if pythonpath is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    code = _PROBE.format(bench=str(BENCH), hide=hide)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_standins_make_hidden_aim_and_wandb_importable():
    """With both hidden (an import of either raises, as on a machine without them), `import aim` / `import wandb`
    succeed on empty modules, find_spec answers (accelerate's availability checks call it), and using one fails
    with a message naming the stand-in."""
    got = _probe("sys.modules['aim'] = None; sys.modules['wandb'] = None")
    assert got["stood"] == ["aim", "wandb"]
    assert got["message"] == "aim / wandb missing: empty stand-ins installed, USB's loggers are not used"
    assert got["aim_standin"] and got["wandb_standin"] and got["spec"]
    assert "empty stand-in" in got["use"]


def test_standins_leave_a_real_module_alone(tmp_path):
    """A wandb that imports is kept as it is (only the missing aim gets a stand-in)."""
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "__init__.py").write_text("REAL = True\ndef init(**kw):\n    return 'real'\n")
    got = _probe("sys.modules['aim'] = None", pythonpath=tmp_path)
    assert got["stood"] == ["aim"]
    assert got["message"] == "aim missing: empty stand-in installed, USB's loggers are not used"
    assert got["wandb_real"] and not got["wandb_standin"]
    assert "use" not in got  # wandb.init is the real one


def test_throughput_matrix_arguments():
    """--compile / --pipelines take comma lists of known values; anything else stops with the valid ones named."""
    tp = _load("throughput")
    assert tp._csv("no, default,reduce-overhead", tp.COMPILE_MODES, "--compile") == ["no", "default",
                                                                                       "reduce-overhead"]  # fmt: skip
    with pytest.raises(SystemExit, match="--compile: \\['fast'\\] is not valid; a comma list of no, default"):
        tp._csv("default,fast", tp.COMPILE_MODES, "--compile")


def test_gpu_suite_script_parses():
    """bash -n on the suite (its dry run is benchmarks/results/gpu_suite_dry_run_cpu.md, minutes: not in CI)."""
    res = subprocess.run(["bash", "-n", str(BENCH / "gpu_suite.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow  # ~3 s; `gpu_suite.sh --dry-run` runs the same matrix (benchmarks/results/gpu_suite_dry_run_cpu.md)
def test_throughput_rows_on_cpu(tmp_path, monkeypatch):
    """throughput.py end to end on a tiny CPU run (random CIFAR-shaped images, cnn_small, 1 + 1 steps): every row of
    the matrix is measured (none failed) and written to --json with the fields the table reads; no host syncs are
    counted on a CPU (that is CUDA's debug mode)."""
    tp = _load("throughput")
    out = tmp_path / "rows.json"
    argv = ["throughput.py", "--arch", "cnn_small", "--batch", "2", "--uratio", "1", "--steps", "1", "--warmup", "1",
            "--workers", "0", "--compile", "no", "--pipelines", "host,device", "--no-usb", "--data-root",
            str(tmp_path), "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert tp.main() == 0
    doc = json.loads(out.read_text())
    assert doc["meta"]["images_per_step"] == 6 and doc["meta"]["data"] == "random CIFAR-shaped images"
    got = [(r["kind"], r["pipeline"], r["compile"], r["workers"]) for r in doc["rows"]]
    assert got == [("host pipeline alone", "host", None, 0), ("compute alone", None, "no", None),
                   ("ssl_kd", "host", "no", 0), ("ssl_kd", "device", "no", 0)]  # fmt: skip
    for r in doc["rows"]:
        assert "error" not in r and r["it_s"] > 0 and r["images_s"] == pytest.approx(6 * r["it_s"])
        assert r["host_syncs"] is None and r["x_usb"] is None
