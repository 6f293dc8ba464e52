"""`last_batch: keep` end to end on the embedded digits data (1397 training images, batch 64: 21 whole batches and
one of 53): 22 steps per epoch, the partial batch trained as a step of its own, a resume just before it bit-exact,
and `drop` still 21 steps."""

from __future__ import annotations

from helpers import CONFIGS, assert_resume_exact, run_cli

from ssl_kd.engine import read_metrics
from ssl_kd.stages.supervised import Supervised

QUICK = CONFIGS / "quickstart.yaml"
ARGS = ["stages.distill.enabled=false", "stages.teacher.epochs=2", "stages.teacher.last_batch=keep",
        "stages.teacher.checkpoint.every=7", "stages.teacher.checkpoint.unit=steps",
        "experiment.logger.progress=false"]  # fmt: skip


def test_keep_trains_the_partial_batch_and_resumes_exactly(tmp_path, monkeypatch):
    sizes: list[int] = []
    step = Supervised.train_step
    monkeypatch.setattr(
        Supervised, "train_step", lambda self, b: (sizes.append(len(b["train"]["y"])), step(self, b))[1]
    )
    full, _ = assert_resume_exact([QUICK, *ARGS], 21, tmp_path, metrics=True)  # resumes right before the partial step
    assert sizes[:44] == [64] * 21 + [53] + [64] * 21 + [53]  # the uninterrupted run: 2 epochs of 22 steps
    assert sizes[44 + 21 :] == [53] + [64] * 21 + [53]  # the resumed run starts with the partial step
    assert max(r.get("step", 0) for r in read_metrics(full)) == 44
    drop = tmp_path / "drop"
    assert run_cli(QUICK, *ARGS, "stages.teacher.last_batch=drop", f"experiment.output_dir={drop}") == 0
    assert max(r.get("step", 0) for r in read_metrics(drop)) == 42  # 2 x 21
