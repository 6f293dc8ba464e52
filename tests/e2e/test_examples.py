"""The README's "write your own stage" example is a file the tests run: examples/my_stage.py (with my_stage.yaml) is
shown verbatim in the README, trains on digits, uses the predictions it registered as state, and resumes bit-exactly
after a crash (which it would not if its bank were not checkpointed)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import assert_resume_exact

from ssl_kd.run import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# 2 epochs of 10 steps on a class-balanced 320-image subset of digits; log every step, checkpoint every epoch
SHORT = [
    "stages.train.epochs=2", "stages.train.batch_size=32", "data.limit_train=320", "experiment.logger.progress=false",
    "experiment.logger.log_every=1", "stages.train.eval.every=1",
]  # fmt: skip


def run(out: Path, *extra: str) -> int:
    return main([str(EXAMPLES / "my_stage.yaml"), *SHORT, f"experiment.output_dir={out}", *extra])


def test_the_readme_shows_the_example_files_as_they_are() -> None:
    readme = (ROOT / "README.md").read_text()
    assert (EXAMPLES / "my_stage.py").read_text().strip() in readme, "README.md must show examples/my_stage.py as is"
    assert "examples/my_stage.yaml" in readme


def test_the_example_stage_learns_from_its_past_predictions_and_resumes_exactly(tmp_path) -> None:
    whole = tmp_path / "full"
    assert run(whole) == 0
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    alpha = {r["step"]: r["train/alpha"] for r in records if r["kind"] == "train"}
    # epoch 1 sees every image for the first time (no past prediction: the label alone); epoch 2 mixes them in
    assert all(alpha[s] == 0 for s in range(1, 11)) and all(alpha[s] > 0 for s in range(11, 21)), alpha
    top1 = [r["test/net/top1"] for r in records if r["kind"] == "eval"]
    assert top1[-1] > 0.5, top1  # 10 classes: chance is 0.1

    # a crash at step 15 resumes from the end of epoch 1: the bank of past predictions must come back with it
    assert_resume_exact([EXAMPLES / "my_stage.yaml", *SHORT], 15, tmp_path, full=whole, metrics=True)
