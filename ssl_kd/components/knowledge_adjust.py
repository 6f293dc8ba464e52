"""Knowledge adjustment as a teacher-target transform ("Preparing Lessons", Wen, Lai, Qian, arXiv 1911.07471; no
official code): where the teacher's argmax is not the label, its target is corrected before any logit loss reads
it, so KA composes with KD, DKD and every temperature policy unchanged (`ka: {mode: lsr | ps}` on a KD-family stage).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ssl_kd.losses import knowledge_adjust
from ssl_kd.options import Strict


class KAOptions(Strict):
    """Label smoothing (`lsr`: the true class gets `correct_prob`) or probability shift (`ps`) on the samples the
    teacher gets wrong; `none` leaves the teacher's logits as they are."""

    mode: Literal["none", "lsr", "ps"] = "none"
    correct_prob: float = Field(0.9, gt=0, lt=1)  # lsr: probability given to the true class


class TeacherTarget:
    """`target(teacher_logits, labels, tau)` -> the teacher logits the distillation term learns from."""

    def __init__(self, opts: KAOptions) -> None:
        self.opts = opts

    def __call__(self, teacher_logits: torch.Tensor, labels: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
        if self.opts.mode == "none":
            return teacher_logits
        return knowledge_adjust(teacher_logits, labels, self.opts.mode, tau, self.opts.correct_prob)
