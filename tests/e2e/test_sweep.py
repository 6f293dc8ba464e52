"""A W&B sweep agent's command line, built from the shipped spec exactly as the agent builds it, runs."""

from __future__ import annotations

import pytest
import yaml
from helpers import ROOT, run_cli

from ssl_kd.engine.run_dir import read_metrics


def agent_argv(spec_path, values):
    """Expand `command` like wandb's agent: ${env} -> /usr/bin/env, ${interpreter} -> python, ${args} -> --k=v."""
    spec = yaml.safe_load(spec_path.read_text())
    argv = []
    for item in spec["command"]:
        if item == "${env}":
            argv.append("/usr/bin/env")
        elif item == "${interpreter}":
            argv.append("python")
        elif item == "${program}":
            argv.append(spec["program"])
        elif item == "${args}":
            argv += [f"--{k}={v}" for k, v in values.items()]  # str() rendering, as the agent does
        else:
            argv.append(item)
    return spec, argv


def first_value(p):
    return p["values"][0] if "values" in p else p.get("min")


@pytest.mark.parametrize("name", ["sweep_quickstart.yaml", "sweep_teacher_student_cifar100.yaml"])
def test_sweep_spec_parameters_are_valid_config_paths(name, fake_data_root, tmp_path, capsys):
    spec, argv = agent_argv(ROOT / "runners" / name, {})
    assert argv[:4] == ["/usr/bin/env", "python", "-m", "ssl_kd.run"]
    values = {k: first_value(p) for k, p in spec["parameters"].items()}
    _, argv = agent_argv(ROOT / "runners" / name, values)
    rest = [a for a in argv[4:] if not a.startswith("models.teacher.checkpoint")]
    assert run_cli(*rest, f"data.root={fake_data_root}", f"experiment.output_dir={tmp_path / 'r'}", "--dry-run") == 0


def test_sweep_agent_run_of_the_quickstart(tmp_path, monkeypatch):
    """The exact argv of an agent run (plus tiny-length overrides) trains; the sweep values took effect."""
    values = {"stages.teacher.optimizer.lr": 1e-05, "stages.distill.temperature": 2.0,
              "stages.distill.loss_weights.kd": 0.75, "experiment.seed": 1}  # fmt: skip
    _, argv = agent_argv(ROOT / "runners" / "sweep_quickstart.yaml", values)
    out = tmp_path / "sweep"
    tiny = ["stages.teacher.epochs=1", "stages.distill.epochs=1", f"experiment.output_dir={out}"]
    assert run_cli(*argv[4:], *tiny) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["stages"]["teacher"]["optimizer"]["lr"] == 1e-05
    assert cfg["stages"]["distill"]["loss_weights"] == {"ce": 0.1, "kd": 0.75}
    assert cfg["experiment"]["seed"] == 1 and cfg["experiment"]["logger"]["wandb"]["project"] == "ssl_kd-quickstart"
    assert read_metrics(out)


def test_wandb_config_values_apply_as_overrides(tmp_path, monkeypatch):
    """Under an agent (WANDB_SWEEP_ID set), dotted keys in wandb.config are unflattened into the config."""
    import wandb

    from ssl_kd import run as run_mod

    class FakeRun:
        id = "abc123"
        config = {"stages.distill.temperature": 3.0, "experiment.seed": 7, "_wandb": {}}

    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setattr(wandb, "init", lambda **kw: FakeRun())
    from ssl_kd.config import resolve_config

    cfg, _ = resolve_config(ROOT / "configs" / "quickstart.yaml", [])
    extra = dict(run_mod.sweep_overrides(cfg))
    assert extra["stages.distill.temperature"] == 3.0 and extra["experiment.seed"] == 7
    # the sweep's runs sit beside runs/quickstart, never inside that (or any) run's folder
    assert extra["experiment.output_dir"] == "runs/quickstart-sweep-sweep1/abc123"
    cfg2, _ = resolve_config(ROOT / "configs" / "quickstart.yaml", list(extra.items()))
    assert cfg2.stages["distill"].temperature.tau == 3.0 and cfg2.experiment.logger.wandb is not None
