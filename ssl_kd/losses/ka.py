"""Knowledge adjustment (KA, "Preparing Lessons", arXiv 1911.07471): fix the teacher's target where it is wrong.

On samples whose teacher argmax is not the label, the soft target is replaced:
- `lsr`: a label-smoothed one-hot, q_y = p, q_other = (1 - p) / (C - 1);
- `ps` (probability shift): the teacher's probabilities of the true class and of its argmax class are swapped, so
  the maximum lands on y (the paper's rule; KD_Lib swaps top-1/top-2 instead, which is not the same).

The result is returned as *teacher logits* whose softmax at `temperature` is the adjusted target, so KA composes
with every logit loss (KD, DKD) and temperature policy unchanged. For `ps` that is the swap of two logits
(softmax commutes with permutations); for `lsr` it is tau * log q.
"""

from __future__ import annotations

from typing import Literal

import torch

from ssl_kd.losses.temperature import as_column

KAMode = Literal["lsr", "ps"]


def knowledge_adjust(
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    mode: KAMode,
    temperature: float | torch.Tensor = 1.0,
    correct_prob: float = 0.9,
) -> torch.Tensor:
    """Teacher logits with the KA correction applied to the rows the teacher gets wrong (others unchanged)."""
    rows = torch.arange(teacher_logits.shape[0], device=teacher_logits.device)
    top = teacher_logits.argmax(dim=1)
    if mode == "ps":
        # where the teacher is right top == target and the swap is the identity, so no mask is needed
        out = teacher_logits.clone()
        out[rows, target] = teacher_logits[rows, top]
        out[rows, top] = teacher_logits[rows, target]
        return out
    if mode == "lsr":
        c = teacher_logits.shape[1]
        q = torch.full_like(teacher_logits, (1.0 - correct_prob) / (c - 1), dtype=torch.float32)
        q[rows, target] = correct_prob
        smoothed = (as_column(temperature) * q.log()).to(teacher_logits.dtype)
        return torch.where((top != target)[:, None], smoothed, teacher_logits)
    raise ValueError(f"unknown knowledge-adjustment mode {mode!r}; valid: lsr, ps")
