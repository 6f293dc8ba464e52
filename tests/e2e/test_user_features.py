"""What users of USB / mdistiller expect: their own model or stage from a config (experiment.imports / --import),
one-line evaluation of a checkpoint, load_model for inference, a results table across runs and seeds; and a stop
(NaN) that the report and the summary show."""

from __future__ import annotations

import csv
import json
import statistics
import textwrap

import pytest
import torch
import yaml
from helpers import CONFIGS, ROOT, run_cli

import ssl_kd
from ssl_kd.engine import read_metrics
from ssl_kd.evaluate import main as evaluate_main
from ssl_kd.report import main as report_main
from ssl_kd.report import make_report

QUICK = CONFIGS / "quickstart.yaml"
EXAMPLES = ROOT / "examples"
SHORT = [
    "stages.teacher.epochs=null", "stages.teacher.iters=10", "stages.distill.epochs=null", "stages.distill.iters=10",
    "experiment.logger.progress=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "run"
    assert run_cli(QUICK, *SHORT, f"experiment.output_dir={out}") == 0
    return out


def last_eval(run, stage, key):
    return [r for r in read_metrics(run) if r["stage"] == stage and r["kind"] == "eval"][-1][key]


# --------------------------------------------------------------------------------- a user's own model / stage
def test_the_documented_custom_model_example_runs(tmp_path):
    """examples/my_models.py + examples/custom_model.yaml, exactly as the README shows them."""
    readme = (ROOT / "README.md").read_text()
    assert (EXAMPLES / "my_models.py").read_text().strip() in readme
    assert len([ln for ln in (EXAMPLES / "my_models.py").read_text().splitlines() if ln.strip()]) <= 12
    out = tmp_path / "r"
    args = ["stages.train.epochs=null", "stages.train.iters=3", "experiment.logger.progress=false"]
    assert run_cli(EXAMPLES / "custom_model.yaml", *args, f"experiment.output_dir={out}") == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["experiment"]["imports"] == [str(EXAMPLES / "my_models.py")]  # absolute: resumable from anywhere
    assert ssl_kd.load_model(out, "net").spec["arch"] == "tiny_cnn"


PLUGIN = '''
import torch.nn.functional as F
from ssl_kd.engine import Stage, register_stage
from ssl_kd.models import register_model
from ssl_kd.models.small import SmallCNN
from ssl_kd.stages.supervised import SupervisedConfig
from ssl_kd.stages._common import labelled_views


@register_model("two_exit_cnn")
class TwoExit(SmallCNN):
    """A second exit on the pooled first-stage map: predict gives both, the headline first."""
    def __init__(self, num_classes, width=16):
        super().__init__(num_classes, width)
        self.exit1 = torch.nn.Linear(2 * width, num_classes)

    def predict(self, batch):
        out = self(batch["x"], return_feats=[1])
        return {"final": out.logits, "exit1": self.exit1(out.feats[0].mean((2, 3)))}


@register_stage("smoothed_ce")
class SmoothedCE(Stage):
    Config = SupervisedConfig

    def setup(self):
        self.net = self.single("train")
        self.add_stream("train", labelled_views(self, "weak", "all"))

    def train_step(self, batch):
        x, y = batch["train"]["x"], batch["train"]["y"]
        return {"ce": F.cross_entropy(self.model(self.net)(x).logits, y, label_smoothing=0.1)}
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """A user package on sys.path holding a model with two exits and a stage type of its own."""
    import sys

    root = tmp_path_factory.mktemp("plugin")
    (root / "userpkg").mkdir()
    (root / "userpkg" / "__init__.py").write_text("")
    (root / "userpkg" / "parts.py").write_text("import torch\n" + textwrap.dedent(PLUGIN))
    sys.path.insert(0, str(root))
    yield "userpkg.parts"
    sys.path.remove(str(root))


@pytest.fixture(scope="module")
def plugin_run(plugin, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("plugin_cfg") / "c.yaml"
    stage = "{type: smoothed_ce, train: [net], iters: 6, optimizer: {lr: 0.05}}"
    cfg.write_text(f"_base_: {CONFIGS / '_base_' / 'digits.yaml'}\nmodels: {{net: {{arch: two_exit_cnn}}}}\n"
                   f"stages:\n  train: {stage}\n")  # fmt: skip
    out = cfg.parent / "run"
    assert run_cli(cfg, "--import", plugin, f"experiment.output_dir={out}", "experiment.logger.progress=false") == 0
    return out


def test_import_of_a_users_model_and_stage(plugin_run):
    recs = read_metrics(plugin_run)
    evals = [r for r in recs if r["kind"] == "eval"]
    assert "test/net/top1" in evals[-1] and "test/net/exit1/top1" in evals[-1]  # both exits were scored
    assert any("train/ce" in r for r in recs)


# --------------------------------------------------------------------------------- evaluate
def test_evaluate_a_checkpoint_gives_the_runs_own_numbers(quick_run, capsys):
    file = quick_run / "checkpoints" / "distill" / "last.pt"
    assert evaluate_main([str(file), "--data", "digits", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ((name, m),) = res["outputs"].items()
    assert m["top1"] == pytest.approx(last_eval(quick_run, "distill", "test/student/top1"), abs=1e-9)
    assert m["top5"] == pytest.approx(last_eval(quick_run, "distill", "test/student/top5"), abs=1e-9)
    assert res["test_images"] == 400 and res["arch"] == "mlp"
    # a run folder and a model name; no run folder is made anywhere
    before = sorted(p.name for p in quick_run.parent.iterdir())
    assert evaluate_main([str(quick_run), "--model", "teacher", "--data", "digits"]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" in printed and "model 'teacher' (cnn_small)" in printed
    assert sorted(p.name for p in quick_run.parent.iterdir()) == before


def test_evaluate_prints_each_exit(plugin, plugin_run, capsys):
    assert evaluate_main([str(plugin_run / "checkpoints" / "train" / "last.pt"), "--data", "digits",
                          "--import", plugin, "--json"]) == 0  # fmt: skip
    outs = json.loads(capsys.readouterr().out)["outputs"]
    assert list(outs) == ["final", "exit1"]
    assert outs["final"]["top1"] == pytest.approx(last_eval(plugin_run, "train", "test/net/top1"), abs=1e-9)
    assert outs["exit1"]["top1"] == pytest.approx(last_eval(plugin_run, "train", "test/net/exit1/top1"), abs=1e-9)
    assert evaluate_main([str(plugin_run), "--data", "digits", "--import", plugin]) == 0
    printed = capsys.readouterr().out
    assert "final" in printed and "(headline)" in printed and "exit1" in printed


@pytest.mark.parametrize(
    "args,needle",
    [
        (["/no/such.pt", "--data", "digits"], "/no/such.pt: no such file or run folder"),
        (["RUN", "--data", "digits"], "holds several models (student, teacher)"),
        (["RUN", "--model", "teacher", "--data", "cifar10", "--data-root", "/nowhere"], "cifar10"),
        (["RUN", "--model", "teacher", "--data", "digits", "data.normalize=bogus"], "data.normalize"),
        (["RUN", "--stage", "nope", "--data", "digits"], "nope/last.pt: not found"),
    ],
    ids=["missing", "several-models", "no-data", "bad-data-key", "no-stage"],
)
def test_evaluate_bad_input(quick_run, capsys, args, needle):
    args = [str(quick_run) if a == "RUN" else a for a in args]
    assert evaluate_main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("ssl_kd: error: ") and "Traceback" not in err


# --------------------------------------------------------------------------------- load_model
def test_load_model_for_inference(quick_run):
    ckpt = torch.load(quick_run / "checkpoints" / "last.pt", weights_only=True)
    student = ssl_kd.load_model(quick_run, "student")
    assert not student.training
    assert all(torch.equal(v, ckpt["models"]["student"][k]) for k, v in student.state_dict().items())
    best = torch.load(quick_run / "checkpoints" / "teacher" / "best.pt", weights_only=True)["models"]["teacher"]
    teacher = ssl_kd.load_model(quick_run, "teacher", stage="teacher", which="best")
    assert all(torch.equal(v, best[k]) for k, v in teacher.state_dict().items())
    x = torch.rand(4, 3, 8, 8)
    assert teacher(x).logits.shape == (4, 10)
    only = ssl_kd.load_model(quick_run / "checkpoints" / "distill" / "best.pt")  # one model in the file
    assert type(only).__name__ == "MLP"
    raw = quick_run.parent / "raw.pth"  # another tool's bare state_dict
    torch.save({f"module.{k}": v for k, v in ckpt["models"]["teacher"].items()}, raw)
    again = ssl_kd.load_model(raw, arch="cnn_small", num_classes=10, width=32)
    assert torch.equal(again(x).logits, ssl_kd.load_model(quick_run, "teacher")(x).logits)


def test_load_model_errors_name_the_file(quick_run):
    from ssl_kd.errors import UserError

    with pytest.raises(UserError, match="holds several models"):
        ssl_kd.load_model(quick_run / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match="no weights for model 'nope'"):
        ssl_kd.load_model(quick_run, "nope")
    with pytest.raises(UserError, match="weights do not fit"):
        ssl_kd.load_model(quick_run / "checkpoints" / "teacher" / "best.pt", arch="cnn_small", num_classes=10, width=8)


# --------------------------------------------------------------------------------- report --table
def fake_run(root, name, seed, top1s, setting="a"):
    root.mkdir(parents=True)
    cfg = {"experiment": {"name": name, "seed": seed, "output_dir": str(root)}, "data": {"dataset": "digits"},
           "models": {"net": {"arch": "mlp"}}, "stages": {"train": {"type": "supervised", "train": ["net"],
                                                                    "tag": setting}}}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    recs = [{"stage": "train", "step": 10 * (i + 1), "global_step": 10 * (i + 1), "kind": "eval",
             "test/net/top1": v} for i, v in enumerate(top1s)]  # fmt: skip
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def test_results_table_across_seeds(tmp_path, capsys):
    curves = {0: [0.5, 0.7, 0.6, 0.65, 0.66, 0.64], 1: [0.4, 0.72, 0.7, 0.69, 0.71, 0.7], 2: [0.6, 0.61, 0.8, 0.7]}
    runs = [fake_run(tmp_path / f"fm_s{s}", f"fm_s{s}", s, c) for s, c in curves.items()]
    runs.append(fake_run(tmp_path / "other", "other", 0, [0.3, 0.35], setting="b"))  # another setting
    out_csv = tmp_path / "t.csv"
    assert report_main([*map(str, runs), "--table", "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    last = [c[-1] for c in curves.values()]
    best = [max(c) for c in curves.values()]
    med5 = [statistics.median(c[-5:]) for c in curves.values()]
    row = next(ln for ln in printed.splitlines() if ln.startswith("| fm_s{0,1,2} |"))
    for vals in (last, best, med5):
        assert f"{100 * statistics.fmean(vals):.2f} ± {100 * statistics.stdev(vals):.2f}" in row
    assert "| 3 | 0,1,2 | train | net |" in row
    assert "| other | 1 | 0 | train | net | 35.00 | 35.00 | 32.50 |" in printed
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["runs"] for r in rows] == ["fm_s{0,1,2}", "other"]
    assert float(rows[0]["best_mean"]) == pytest.approx(100 * statistics.fmean(best))
    assert float(rows[0]["last_std"]) == pytest.approx(100 * statistics.stdev(last))


def test_table_bad_folder(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope"), "--table"]) == 2
    err = capsys.readouterr().err
    assert "nope: no such run folder" in err and "Traceback" not in err


# --------------------------------------------------------------------------------- a stopped run
def test_a_nan_stop_is_recorded_reported_and_summarised(tmp_path, capsys, monkeypatch):
    from ssl_kd.stages import kd

    real = kd.kd_loss
    monkeypatch.setattr(kd, "kd_loss", lambda s, t, tau, *a: real(s, t, tau, *a) * float("nan"))
    out = tmp_path / "nan"
    assert run_cli(QUICK, *SHORT, f"experiment.output_dir={out}") == 1
    printed = capsys.readouterr().out
    assert "stage 'distill' stopped: non-finite loss in kd (first at step 1)" in printed
    assert "distill              kd           stopped at step 1: non-finite loss in kd" in printed
    stop = [r for r in read_metrics(out) if r.get("kind") == "stop"]
    assert len(stop) == 1 and stop[0]["stage"] == "distill" and stop[0]["terms"] == ["kd"]
    assert stop[0]["first_step"] == 1
    report = make_report(out).read_text()
    assert "stopped at 1 (kd NaN/inf)" in report and "## Stopped" in report
    assert "not run" not in report


# --------------------------------------------------------------------------------- the dry-run plan
def distill_plan(capsys, tmp_path, *args: str) -> str:
    assert run_cli(QUICK, *args, f"experiment.output_dir={tmp_path / 'never'}", "--dry-run") == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "never").exists()
    return out[out.index("2. distill") :]


def test_dry_run_plans_tell_kd_dkd_dot_ctkd_and_dtd_apart(tmp_path, capsys):
    """A new user could not tell KD from DKD from DOT in a plan: each shows its loss terms, blocks and optimizer."""
    kd = distill_plan(capsys, tmp_path)
    assert "loss: 0.1 ce + 0.9 kd" in kd and "temperature={policy: fixed, tau: 4}" in kd and "alpha=" not in kd
    assert "optimizer: sgd lr 0.05, momentum 0.9 nesterov" in kd
    assert "LR schedule: cosine to min_lr 0, stepped per step" in kd and "EMA: off" in kd
    assert "eval: every 4 epochs (batch 256); checkpoint every 2 epochs and at the end" in kd
    dkd = distill_plan(capsys, tmp_path, "stages.distill.type=dkd", "stages.distill.loss_weights={ce: 1, kd: 1}")
    assert "loss: 1 ce + 1 kd" in dkd and "alpha=1, beta=8, warmup_epochs=20" in dkd  # defaults shown
    alias = distill_plan(capsys, tmp_path, "stages.distill.loss=dkd", "stages.distill.dkd.beta=2")  # the old keys
    assert "deprecated: `type: kd` with `loss: dkd` is now `type: dkd`" in alias and "beta=2" in alias
    dot = ["stages.distill.optimizer.name=dot", "stages.distill.optimizer.nesterov=false"]
    dot_plan = distill_plan(capsys, tmp_path, *dot)
    assert "optimizer: dot lr 0.05, momentum 0.9" in dot_plan and "task momentum 0.825" in dot_plan
    ctkd = distill_plan(capsys, tmp_path, "stages.distill.temperature={policy: ctkd_global}")
    assert "temperature={policy: ctkd_global, tau: 4, t_start: 1, t_range: 20" in ctkd and "gamma" not in ctkd
    dtd_args = ["stages.distill.temperature_policy=dtd", "stages.distill.dtd.tau_squared=false"]  # the old keys
    dtd = distill_plan(capsys, tmp_path, *dtd_args)
    assert "tau_squared: False" in dtd and "deprecated: `temperature_policy, dtd`" in dtd
    speed = ["data.pipeline=device", "experiment.channels_last=true", "stages.distill.optimizer.impl=foreach"]
    assert run_cli(QUICK, *speed, f"experiment.output_dir={tmp_path / 'never'}", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "channels_last" in out and "device pipeline" in out and "foreach update kernel" in out
