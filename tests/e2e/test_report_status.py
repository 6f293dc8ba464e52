"""What the report and the console say about a run: a stage interrupted mid-way is shown as interrupted at step k of
N; the progress bar shows the total loss, the stage's weighted terms in their order and its key diagnostic; best
labels do not overlap in tiny runs; the export stage's parameter and FLOP counts are in report.md."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import CONFIGS, run_cli, run_crashing

from ssl_kd.callbacks.progress import ProgressLogger, bar_keys
from ssl_kd.config.registry import stage_types
from ssl_kd.report import accuracy_figure, load_run, make_report

SHORT = [f"stages.{s}.{k}" for s in ("teacher", "distill") for k in ("epochs=null", "iters=20", "eval.every=10")]
SHORT += ["experiment.logger.log_every=5", "experiment.logger.progress=false"]


def row(md: str, stage: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {stage} |"))


def test_a_stage_interrupted_mid_way_is_shown_as_interrupted_until_it_finishes(tmp_path):
    out = tmp_path / "r"
    assert run_crashing(20 + 12, CONFIGS / "quickstart.yaml", *SHORT, f"experiment.output_dir={out}") == 130
    md = make_report(out).read_text()
    assert "interrupted" not in row(md, "teacher") and "| 20 |" in row(md, "teacher")
    assert "**interrupted** at step 10 of 20" in row(md, "distill")  # the last record it logged before the kill
    assert "## Interrupted" in md and "last logged step 10 of 20" in md
    assert run_cli(out / "config.yaml", "--resume") == 0
    md = make_report(out).read_text()
    assert "## Interrupted" not in md and "**interrupted**" not in md and "| 20 |" in row(md, "distill")
    assert json.loads((out / "stages.json").read_text()) == {
        "teacher": {"total_steps": 20, "finished": True}, "distill": {"total_steps": 20, "finished": True}
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "weights", "shown"),
    [
        ("fullmatch", None, ["loss", "sup", "unsup", "eml", "anl", "mask"]),  # was: anl, eml, k, loss
        ("fixmatch", None, ["loss", "sup", "unsup", "mask"]),  # weight 0: eml / anl are logged only
        ("kd", {"kd": 0.9, "ce": 0.1}, ["loss", "ce", "kd"]),  # loss_weights' order (the defaults' keys first)
    ],
)
def test_the_progress_bar_shows_the_loss_the_weighted_terms_and_the_key_diagnostic(kind, weights, shown):
    cls = stage_types()[kind]
    cfg = cls.Config.model_validate({"type": kind, "train": ["net"], **({"loss_weights": weights} if weights else {})})
    assert bar_keys(cls, cfg) == shown
    logger = ProgressLogger()
    logger.keys = shown
    record = {"kind": "train", **{f"train/{k}": 0.5 for k in ("anl", "eml", "k", "loss", "mask", "sup", "unsup")}}
    record |= {"train/ce": 0.25, "train/kd": 0.75, "lr": 0.1}
    assert list(logger.postfix(record)) == [*shown, "lr"]


def test_best_labels_do_not_overlap_in_a_tiny_run(tmp_path):
    """Two stages of one eval each and an EMA model: every best is at the same few points."""
    run_dir = tmp_path / "tiny"
    run_dir.mkdir()
    stages = {"a": {"type": "supervised", "train": ["t"]}, "b": {"type": "kd", "train": ["s"], "uses": ["t"]}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"experiment": {"name": "tiny"}, "stages": stages}))
    recs = [
        {"stage": "a", "step": 2, "global_step": 2, "kind": "eval", "test/t/top1": 0.1, "test/t/raw_top1": 0.1,
         "test/t/exit1/top1": 0.1},
        {"stage": "b", "step": 0, "global_step": 2, "kind": "eval", "test/s/top1": 0.1},
        {"stage": "b", "step": 2, "global_step": 4, "kind": "eval", "test/s/top1": 0.1},
    ]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    fig = accuracy_figure(load_run(run_dir))
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    (ax,) = fig.axes[:1]
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 4
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), "two best labels overlap"


def test_the_export_stages_parameter_and_flop_counts_are_in_report_md(tmp_path):
    run_dir = tmp_path / "exp"
    run_dir.mkdir()
    stages = {"prune": {"type": "supervised", "train": ["net"]}, "export": {"type": "export", "uses": ["net"]}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"experiment": {"name": "exp"}, "stages": stages}))
    recs = [
        {"stage": "prune", "step": 4, "global_step": 4, "kind": "eval", "test/net/top1": 0.5},
        {"stage": "export", "step": 0, "global_step": 4, "epoch": 0, "kind": "export", "export/net/params": 40000,
         "export/net/params_before": 80000, "export/net/flops": 1500000, "export/net/flops_before": 3000000,
         "export/net/max_abs_diff": 3.1e-7},  # the keys stages/pruned_export.py logs
    ]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    md = make_report(run_dir).read_text()
    assert "## Export" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("- **export**"))
    assert "`net`" in line and "parameters 80,000 → 40,000 (-50.0%)" in line
    assert "FLOPs 3,000,000 → 1,500,000 (-50.0%)" in line and "3.10e-07" in line
