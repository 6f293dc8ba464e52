"""Every check the config, its files and the data decide runs before the first stage (engine/plan.py: preflight,
which the run CLI calls before it writes the run folder and `--dry-run` calls before it prints the plan).

Each case below is a mistake that used to pass `--dry-run` and fail only when its stage started (after the stages
before it had trained), or fail after `config.yaml` was written, or pass unnoticed: now it is exit 2 with one line
naming the YAML path, the same under `--dry-run`, and the run folder is never created.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import CONFIGS, one_line_error, quickstart_short, run_cli, tiny_config

QUICK = CONFIGS / "quickstart.yaml"
SHORT = quickstart_short(4)


def _no_module_file(tmp_path):
    path = tmp_path / "heads.pt"
    torch.save({"models": {}, "modules": {"other_head": {"w": torch.zeros(2)}}}, path)
    return path


def _wrong_shape_file(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save({"models": {"teacher": {"fc.weight": torch.zeros(3, 3)}}}, path)
    return path


# (case, overrides (a callable gets tmp_path), what the one line names)
PREFLIGHT = [
    ("prune on an architecture without pruning units", ["stages.teacher.prune={method: sfp}"],
     ["stages.teacher.prune (model 'teacher')", "cnn_small", "does not know the layers"]),
    ("init.modules names a module the stage does not register",
     ["stages.distill.init={mode: stage, stage: teacher, models: [], modules: [head]}"],
     ["stages.distill.init.modules", "no module 'head'", "temperature"]),
    ("init.modules from a file that lacks the module",
     lambda t: [f"stages.distill.init={{mode: checkpoint, path: {_no_module_file(t)}, models: [], "
                "modules: [temperature]}"],
     ["stages.distill.init.path", "holds no module 'temperature'", "other_head"]),
    ("models.<name>.checkpoint that does not exist", lambda t: [f"models.teacher.checkpoint={t / 'nope.pt'}"],
     ["models.teacher.checkpoint", "file not found", "nope.pt"]),
    ("models.<name>.checkpoint that does not fit", lambda t: [f"models.teacher.checkpoint={_wrong_shape_file(t)}"],
     ["models.teacher.checkpoint", "do not fit"]),
    ("init.path that does not exist",
     lambda t: [f"stages.distill.init={{mode: checkpoint, path: {t / 'nope.pt'}}}"],
     ["stages.distill.init.path", "nope.pt"]),
    ("sampler block: a class-aware batch needs more classes than the data has",
     ["stages.distill.sampler={kind: m_per_class, m: 2}"],
     ["stages.distill.sampler", "needs 32 distinct classes", "only 10"]),
    ("sampler block: a stream the stage does not have", ["stages.teacher.sampler={kind: m_per_class, m: 2, "
                                                         "streams: [unlabeled]}"],
     ["stages.teacher.sampler.streams", "['unlabeled']"]),
    ("last_batch: keep with a leftover that does not divide over the accumulation steps",
     ["stages.distill.last_batch=keep", "stages.distill.grad_accum=2", "stages.distill.batch_size=60"],
     ["stages.distill.last_batch", "does not divide evenly"]),
]  # fmt: skip


def _args(overrides, tmp_path):
    return overrides(tmp_path) if callable(overrides) else overrides


@pytest.mark.parametrize("case,overrides,needles", PREFLIGHT, ids=[c[0] for c in PREFLIGHT])
def test_every_check_runs_before_the_first_stage(tmp_path, capsys, case, overrides, needles):
    out = tmp_path / "r"
    args = [*SHORT, *_args(overrides, tmp_path), f"experiment.output_dir={out}"]
    assert run_cli(QUICK, *args, "--dry-run") == 2
    one_line_error(capsys, *needles)
    assert run_cli(QUICK, *args) == 2
    one_line_error(capsys, *needles)
    assert not out.exists()  # not even config.yaml: the first stage never started


# ------------------------------------------------------------------------------------------- malformed values
# each used to give a traceback from torch (after config.yaml was written), or train on silently
MALFORMED = [
    ("models.teacher.num_classes=1000000000", ["models.teacher.num_classes", "less than or equal to 1000000"]),
    ("stages.teacher.optimizer={name: adam, lr: 0.001, betas: [0.9, 1.0]}",
     ["stages.teacher.optimizer.betas", "[0, 1)"]),
    ("stages.teacher.optimizer={name: adamw, lr: 0.001, betas: [-0.1, 0.999]}",
     ["stages.teacher.optimizer.betas", "[0, 1)"]),
    ("stages.teacher.optimizer.momentum=0", ["stages.teacher.optimizer.nesterov", "momentum > 0"]),  # nesterov: true
    ("stages.teacher.epochs=true", ["stages.teacher.epochs", "a boolean where a number is expected"]),
    ("stages.teacher.iters=true", ["stages.teacher.iters", "a boolean where a number is expected"]),
    ("stages.distill.batch_size=false", ["stages.distill.batch_size", "a boolean where a number is expected"]),
    ("stages.teacher.scheduler={name: multistep, milestones: [4, true]}",
     ["stages.teacher.scheduler.milestones", "a boolean"]),
    ("stages.distill.loss_weights.kd=true", ["stages.distill.loss_weights", "a boolean"]),
    ("stages.teacher.scheduler.gamma=-0.1", ["stages.teacher.scheduler.gamma", "greater than 0"]),
    ("stages.teacher.scheduler={name: multistep, milestones: [-2, 3]}",
     ["stages.teacher.scheduler.milestones", "positive and increasing"]),
    ("stages.teacher.scheduler={name: multistep, milestones: [3, 2]}",
     ["stages.teacher.scheduler.milestones", "positive and increasing"]),
    ("stages.teacher.optimizer.lr=.inf", ["stages.teacher.optimizer.lr", "finite", "inf"]),
    ("stages.distill.temperature=.inf", ["stages.distill.temperature.tau", "finite"]),
    ("stages.distill.loss_weights.kd=.nan", ["stages.distill.loss_weights.kd", "finite", "nan"]),
]  # fmt: skip


@pytest.mark.parametrize("override,needles", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_values_are_named_before_anything_is_written(tmp_path, capsys, override, needles):
    out = tmp_path / "r"
    assert run_cli(QUICK, *SHORT, override, f"experiment.output_dir={out}", "--dry-run") == 2
    one_line_error(capsys, *needles)
    assert run_cli(QUICK, *SHORT, override, f"experiment.output_dir={out}") == 2
    one_line_error(capsys, *needles)
    assert not out.exists()


@pytest.mark.parametrize("block", ["stages", "models"])
def test_stage_and_model_names_are_plain_identifiers(tmp_path, capsys, block):
    """A stage named `../../escaped` wrote its best.pt / last.pt outside the run folder."""
    raw = yaml.safe_load(QUICK.read_text())
    raw["_base_"] = str(CONFIGS / "_base_" / "digits.yaml")
    raw[block]["../../escaped"] = raw[block].pop("teacher" if block == "stages" else "student")
    if block == "models":
        raw["stages"]["distill"]["train"] = ["../../escaped"]
    path = tmp_path / "a" / "b" / "c.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "a" / "b" / "r"
    assert run_cli(path, *[a for a in SHORT if "teacher" not in a], f"experiment.output_dir={out}") == 2
    one_line_error(capsys, f"{block}:", "'../../escaped' is not a plain identifier")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c.yaml"]  # nothing written anywhere


def test_ragged_metadata_csv_row_names_the_file_and_line(tmp_path, capsys):
    from PIL import Image

    rows = ["file,lat,lon,date"]
    for split in ("train", "test"):
        for c in ("oak", "pine"):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(torch.full((8, 8, 3), 40 * i, dtype=torch.uint8).numpy()).save(
                    tmp_path / "f" / split / c / f"{i}.png"
                )
                rows.append(f"{split}/{c}/{i}.png,10,20,2020-01-0{i + 1}")
    rows[3] += ",extra"  # train/pine/0.png: five cells under a four-column header
    rows[6] = "test/oak/1.png,10"  # and two cells
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    data = {"dataset": "image_folder", "path": str(tmp_path / "f"), "metadata": {"csv": str(tmp_path / "meta.csv")}}
    stages = {"train": {"type": "supervised", "train": ["net"], "iters": 2, "batch_size": 4}}
    path = tiny_config(tmp_path / "c.yaml", {"net": {"arch": "mlp"}}, stages, data=data)
    out = tmp_path / "r"
    assert run_cli(path, f"experiment.output_dir={out}", "--dry-run") == 2
    one_line_error(capsys, "meta.csv, line 4: 5 cell(s), but the header has 4 (file,lat,lon,date)")
    rows[3] = rows[3].removesuffix(",extra")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    assert run_cli(path, f"experiment.output_dir={out}") == 2
    one_line_error(capsys, "meta.csv, line 7: 2 cell(s), but the header has 4")
    assert not out.exists()


def test_dry_run_shows_the_prune_block(tmp_path, capsys):
    """The README says the dry run prints each stage's options: `prune:` among them."""
    models = {"net": {"arch": "resnet8"}}
    stages = {"p": {"type": "supervised", "train": ["net"], "epochs": 2, "batch_size": 16,
                    "prune": {"method": "ghfp", "keep_ratio": 0.5, "decay": 0.5}}}  # fmt: skip
    path = tiny_config(tmp_path / "c.yaml", models, stages)
    assert run_cli(path, f"experiment.output_dir={tmp_path / 'r'}", "--dry-run") == 0
    plan = " ".join(capsys.readouterr().out.split())  # the line wraps
    assert "prune: ['net']: method=ghfp, keep_ratio=0.5, scope=layer," in plan
    assert "decay=0.5," in plan and "hard_ramp=cubic," in plan and "keep_ramp=none" in plan


def test_fp16_with_a_loss_group_optimizer_is_refused_at_validation():
    """DOT backpropagates its loss groups separately, which fp16 loss scaling cannot: refused from the config (it
    used to wait for the stage's optimizer; fp16 needs a GPU, so this checks the validation itself)."""
    from ssl_kd.config.validate import validate_config
    from ssl_kd.errors import UserError

    raw = yaml.safe_load(QUICK.read_text())
    raw.pop("_base_")
    raw["data"] = {"dataset": "digits"}
    raw["experiment"]["precision"] = "fp16"
    raw["stages"]["distill"]["optimizer"] = {"name": "dot", "lr": 0.05, "momentum": 0.9}
    with pytest.raises(UserError, match=r"stages\.distill\.optimizer\.name: 'dot' backpropagates its loss groups"):
        validate_config(raw)
    raw["experiment"]["precision"] = "bf16"
    validate_config(raw)
