"""Loading weights from a run folder runs no code the folder names: `ssl_kd.load_model`, `python -m ssl_kd.evaluate`
and `--resume` import a run's `experiment.imports` only when the user passes them (`imports=` / `--import`); the
folder's list is named in one line, and in the error when the model cannot be built without it. Each check runs in
a fresh interpreter (this one has imported the module already)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, run_cli, run_crashing, tiny_config

USER_MODULE = textwrap.dedent('''
    import os
    from pathlib import Path

    from torch import nn

    from ssl_kd.models import ClassifierModel, register_model

    Path(os.environ["MARKER"]).write_text("imported")  # what a hostile folder's code could do


    @register_model("marked_cnn")
    class MarkedCNN(ClassifierModel):
        def __init__(self, num_classes: int, width: int = 8) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
            self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())])
            self.fc, self.num_classes = nn.Linear(width, num_classes), num_classes
            self.feat_dim, self.feat_channels = width, (width, width)
''')  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run and a crashed one of a model defined in a .py file the config imports."""
    tmp = tmp_path_factory.mktemp("imports")
    (tmp / "marked.py").write_text(USER_MODULE)
    stages = {"s": {"type": "supervised", "train": ["net"], "iters": 4, "batch_size": 16,
                    "checkpoint": {"every": 1, "unit": "steps"}}}  # fmt: skip
    cfg = tiny_config(tmp / "c.yaml", {"net": {"arch": "marked_cnn"}}, stages)
    text = cfg.read_text().replace("experiment:\n", "experiment:\n  imports: [marked.py]\n", 1)
    cfg.write_text(text)
    os.environ["MARKER"] = str(tmp / "marker_setup")
    try:
        assert run_cli(cfg, f"experiment.output_dir={tmp / 'done'}") == 0
        assert run_crashing(2, cfg, f"experiment.output_dir={tmp / 'cut'}") == 130
    finally:
        del os.environ["MARKER"]
    return tmp


def python(tmp, marker: str, *args: str) -> tuple[subprocess.CompletedProcess, bool]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MARKER": str(tmp / marker), "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, cwd=tmp)
    return res, (tmp / marker).exists()


def test_load_model_does_not_import_a_folders_code_and_says_how_to(runs):
    code = "import ssl_kd, sys\ntry:\n    ssl_kd.load_model(sys.argv[1])\nexcept Exception as e:\n    print(e)"
    res, imported = python(runs, "m1", "-c", code, str(runs / "done"))
    assert not imported
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("ssl_kd: note:")]
    assert len(notes) == 1 and "experiment.imports" in notes[0] and "marked.py" in notes[0]
    assert "--import" in res.stdout and "marked.py" in res.stdout and "marked_cnn" in res.stdout
    code = "import ssl_kd, sys\nprint(ssl_kd.load_model(sys.argv[1], imports=['marked.py']).spec['arch'])"
    res, imported = python(runs, "m2", "-c", code, str(runs / "done"))
    assert res.returncode == 0 and imported and res.stdout.strip() == "marked_cnn" and "note" not in res.stderr


@pytest.mark.slow  # a fresh interpreter; load_model's test holds the rule in CI
def test_evaluate_needs_the_import_passed_by_the_user(runs):
    res, imported = python(runs, "e1", "-m", "ssl_kd.evaluate", str(runs / "done"), "--data", "digits")
    assert res.returncode == 2 and not imported
    assert "--import" in res.stderr.splitlines()[-1]
    res, imported = python(runs, "e2", "-m", "ssl_kd.evaluate", str(runs / "done"), "--data", "digits",
                           "--import", "marked.py")  # fmt: skip
    assert res.returncode == 0 and imported and "top-1" in res.stdout


@pytest.mark.slow  # a fresh interpreter; load_model's test holds the rule in CI
def test_resume_imports_only_what_the_user_passes(runs):
    config = str(runs / "cut" / "config.yaml")
    res, imported = python(runs, "r1", "-m", "ssl_kd.run", config, "--resume")
    assert res.returncode == 2 and not imported
    err = res.stderr.strip().splitlines()
    assert err[0].startswith("ssl_kd: note:") and "marked.py" in err[0]
    assert err[-1].startswith("ssl_kd: error:") and "--import" in err[-1] and "marked_cnn" in err[-1]
    res, imported = python(runs, "r2", "-m", "ssl_kd.run", config, "--resume", "--import", "marked.py")
    assert res.returncode == 0 and imported, res.stderr[-2000:]
