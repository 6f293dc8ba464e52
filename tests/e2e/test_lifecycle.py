"""The stage lifecycle: hook order (also across a crash and resume, mid-epoch and at an epoch boundary), stage
callbacks, the EMA model as memory a stage reads, stage modules saved with the stage, and models whose shape
changes at a stage boundary."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIGS, assert_resume_exact, run_cli
from torch import nn

from ssl_kd.config import registry
from ssl_kd.config.schema import StageConfig
from ssl_kd.engine import Callback, Stage
from ssl_kd.models import create_model
from ssl_kd.stages._common import labelled_views

SPE, EPOCHS = 3, 3


class EventLog:
    def __init__(self) -> None:
        self.events: list[list] = []

    def state_dict(self) -> dict:
        return {"events": [list(e) for e in self.events]}

    def load_state_dict(self, state: dict) -> None:
        self.events = [list(e) for e in state["events"]]


class ProbeCallback(Callback):
    order = 45  # between evaluation and checkpoint

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def on_step_end(self, runner, terms) -> None:
        self.log.events.append(["cb_step_end", runner.stage.progress.step])

    def on_epoch_end(self, runner) -> None:
        self.log.events.append(["cb_epoch_end", runner.stage.progress.step])

    def on_stage_end(self, runner) -> None:  # after the stage's own on_stage_end: every event is in
        (runner.run_dir.root / "events.json").write_text(json.dumps(self.log.events))


class ProbeConfig(StageConfig):
    loss_weights: dict[str, float] = {"ce": 1.0}


class Probe(Stage):
    """Trains with CE and records every hook with the step it saw, in registered (checkpointed) state."""

    Config = ProbeConfig
    type_name = "probe"

    def setup(self) -> None:
        self.net = self.single("train")
        self.add_stream("train", labelled_views(self, "none", "all"))
        self.log = self.register_state("events", EventLog())
        self.head = self.register_module("head", nn.Linear(1, 1))  # an extra module: optimized and saved

    def record(self, name: str) -> None:
        self.log.events.append([name, self.progress.step])

    def train_step(self, batch):
        part = batch["train"]
        logits = self.forward(self.net, part).logits
        extra = self.module("head")(torch.ones(1, 1, device=logits.device)).sum() * 0.0
        return {"ce": F.cross_entropy(logits, part["y"]) + extra}, {"seen_ema": torch.tensor(float(self.ema_ok()))}

    def ema_ok(self) -> bool:
        ema = self.ema(self.net)
        return (ema is not None) == self.cfg.ema.enabled and (ema is None or not ema.training)

    def on_stage_start(self) -> None:
        self.record("stage_start")

    def on_epoch_start(self) -> None:
        self.record("epoch_start")

    def after_backward(self) -> None:
        grads = [p.grad for p in self.raw_model(self.net).parameters()]
        assert all(g is not None for g in grads)  # the step's gradient is there, before the optimizer step
        self.record("after_backward")

    def on_step_end(self) -> None:
        self.record("step_end")

    def on_epoch_end(self) -> None:
        self.record("epoch_end")

    def on_stage_end(self) -> None:
        self.record("stage_end")

    def callbacks(self):
        return [ProbeCallback(self.log)]


class Reshape(Stage):
    """Trains nothing; swaps the student for a narrower MLP (what a pruning export does)."""

    type_name = "reshape"
    trains = False

    def on_stage_start(self) -> None:
        self.replace_model("student", create_model("mlp", 10, hidden=8, depth=1))


@pytest.fixture(autouse=True)
def probe_types(monkeypatch):
    monkeypatch.setitem(registry._STAGES, "probe", Probe)
    monkeypatch.setitem(registry._STAGES, "reshape", Reshape)


def expected_events() -> list[list]:
    ev = [["stage_start", 0]]
    for e in range(EPOCHS):
        ev.append(["epoch_start", e * SPE])
        for s in range(e * SPE, (e + 1) * SPE):
            ev += [["after_backward", s], ["step_end", s + 1], ["cb_step_end", s + 1]]
        ev += [["epoch_end", (e + 1) * SPE], ["cb_epoch_end", (e + 1) * SPE]]
    return ev + [["stage_end", EPOCHS * SPE]]


def probe_args(out, *extra):
    return [
        CONFIGS / "quickstart.yaml", "stages.teacher.type=probe", f"stages.teacher.epochs={EPOCHS}",
        f"stages.teacher.steps_per_epoch={SPE}", "stages.teacher.batch_size=16", "stages.teacher.eval.every=1",
        "stages.distill.enabled=false", "experiment.logger.log_every=2", "experiment.logger.progress=false",
        f"experiment.output_dir={out}", *extra,
    ]  # fmt: skip


def test_hooks_run_in_order(tmp_path):
    out = tmp_path / "full"
    assert run_cli(*probe_args(out, "stages.teacher.ema.enabled=true", "stages.teacher.ema.decay=0.5")) == 0
    assert json.loads((out / "events.json").read_text()) == expected_events()
    records = [r for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())]
    assert all(r["train/seen_ema"] == 1.0 for r in records if r["kind"] == "train")  # the stage read its EMA
    assert "train/seen_ema" not in {k for r in records for k in r if r["kind"] == "eval"}
    # the stage's extra module is saved with the stage's weights (last and best)
    for which in ("last", "best"):
        saved = torch.load(out / f"checkpoints/teacher/{which}.pt", weights_only=True)
        assert set(saved["modules"]["head"]) == {"weight", "bias"} and saved["specs"]["teacher"]["arch"] == "cnn_small"


@pytest.mark.parametrize(
    "checkpoint_every,crash_at",
    [(2, 5), (3, 4), (3, 6)],  # resume mid-epoch (step 4); from an epoch-end checkpoint (3, 6)
)
def test_resume_replays_no_hook_and_skips_none(tmp_path, checkpoint_every, crash_at):
    ckpt = [f"stages.teacher.checkpoint.every={checkpoint_every}", "stages.teacher.checkpoint.unit=steps"]
    _, cut = assert_resume_exact(lambda out: probe_args(out, *ckpt), crash_at, tmp_path)
    assert json.loads((cut / "events.json").read_text()) == expected_events()


def test_per_epoch_lr_resumes_exactly_from_an_epoch_end_checkpoint(tmp_path):
    """A checkpoint due at an epoch boundary is written after the per-epoch LR step (it used to be written before,
    so a resumed run's LR lagged one epoch behind)."""
    args = ["stages.teacher.epochs=4", "stages.distill.enabled=false", "stages.teacher.checkpoint.every=1",
            "stages.teacher.scheduler={name: multistep, milestones: [1, 2, 3], gamma: 0.5, interval: epoch}",
            "experiment.logger.progress=false"]  # fmt: skip
    assert_resume_exact([CONFIGS / "quickstart.yaml", *args], 30, tmp_path)  # crash in epoch 2 (21 steps each)


SHAPES = """
_base_: {base}
models:
  student: {{arch: mlp, kwargs: {{hidden: 64, depth: 1}}}}
stages:
  wide: {{type: supervised, train: [student], iters: 6, batch_size: 32}}
  export: {{type: reshape}}
  narrow: {{type: supervised, train: [student], iters: 12, batch_size: 32,
           checkpoint: {{every: 4, unit: steps}}}}
experiment: {{logger: {{progress: false, log_every: 4}}}}
"""


def test_model_shape_change_survives_resume_and_init(tmp_path):
    cfg = tmp_path / "shapes.yaml"
    cfg.write_text(SHAPES.format(base=CONFIGS / "_base_" / "digits.yaml"))
    # crash inside the stage that trains the narrow model: resume must rebuild it narrow from the checkpoint
    full, _ = assert_resume_exact([cfg], 6 + 10, tmp_path)
    a = torch.load(full / "checkpoints/last.pt", weights_only=True)
    assert a["specs"]["student"]["kwargs"]["hidden"] == 8 and a["models"]["student"]["fc.weight"].shape == (10, 8)
    # a later experiment that starts from the narrow stage's file gets the narrow shape, whatever its YAML says
    later = tmp_path / "later.yaml"
    narrow = full / "checkpoints" / "narrow" / "last.pt"
    later.write_text(
        f"_base_: {CONFIGS / '_base_' / 'digits.yaml'}\n"
        "models: {student: {arch: mlp, kwargs: {hidden: 64, depth: 1}}}\n"
        f"stages: {{check: {{type: evaluate, uses: [student], init: {{mode: checkpoint, path: {narrow}}}}}}}\n"
    )
    assert run_cli(later, f"experiment.output_dir={tmp_path / 'later'}", "experiment.logger.progress=false") == 0
    c = torch.load(tmp_path / "later/checkpoints/last.pt", weights_only=True)
    assert c["models"]["student"]["fc.weight"].shape == (10, 8)
    assert c["results"]["check"]["last"]["student/top1"] == a["results"]["narrow"]["last"]["student/top1"]


def test_a_trained_model_cannot_be_replaced_mid_stage():
    class FakeStage:
        name, cfg = "s", StageConfig(type="x", train=["student"])

    class FakeRunner:
        stage = FakeStage()

    from ssl_kd.engine import Runner

    with pytest.raises(RuntimeError, match="between stages"):
        Runner.replace_model(FakeRunner(), "student", create_model("mlp", 3))


def test_resume_of_a_checkpoint_from_another_format_is_refused_clearly(tmp_path, capsys):
    out = tmp_path / "old"
    args = [CONFIGS / "quickstart.yaml", "stages.teacher.epochs=1", "stages.distill.enabled=false",
            "experiment.logger.progress=false", f"experiment.output_dir={out}"]  # fmt: skip
    assert run_cli(*args) == 0
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    ckpt["format"] = "ssl_kd/1"
    torch.save(ckpt, out / "checkpoints/last.pt")
    assert run_cli(out / "config.yaml", "--resume") == 2
    err = capsys.readouterr().err
    assert "another version of ssl_kd (format ssl_kd/1" in err and "init" in err and "Traceback" not in err
