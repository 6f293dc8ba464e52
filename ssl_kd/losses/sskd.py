"""SSKD (Xu et al., ECCV 2020; xuguodong03/SSKD student.py) as pure functions.

A batch of B images is expanded to 4B rows, interleaved per sample (`ssl_kd.data.rotation`): row 4i + k is image i
rotated k * 90 degrees. Rows k = 0 are the "normal" samples, the 3B rows k = 1..3 the "transformed" ones, in the
order of `rotated()` (3i, 3i + 1, 3i + 2 all come from image i). For a projection h on each net's pooled feature:

    A[r, j] = cos(h(x_r^rot), h(x_j^0))                     (3B, B): each rotated row against every original
    head loss  = CE(A, src)      src[r] = r // 3            no temperature (the reference feeds cosines as logits)
    rank(r)    = position of row r's target in its scores sorted descending (0 = the teacher is right)
    keep       = all rows with rank 0 + the floor(ratio * #wrong) wrong rows of smallest rank   (error-level ranking)
    L_tf = tau2^2 * KL(softmax(z_t^rot / tau2) || softmax(z_s^rot / tau2)) over the kept rows, rank on the
           teacher's class probabilities with target y of the source image, ratio_tf
    L_ss = tau3^2 * KL(softmax(A_t / tau3) || softmax(A_s / tau3)) row-wise over the kept rows, rank on A_t with
           target src, ratio_ss

Reductions follow the reference: `F.kl_div(..., reduction='batchmean')` on the kept rows, i.e. the sum over kept rows
and classes (columns) divided by the number of kept rows. The teacher side (logits, A_t, ranks, kept rows) carries no
gradient; A_s carries gradient through both the rotated and the original rows of the student's head.

Reference quirks, and where this port differs:
- Ties at the cut. The ranks are small integers (0 .. C-1, or 0 .. B-1 for L_ss), so wrong rows of equal rank at
  the keep/drop boundary are common (with B = 2 images every wrong similarity row has rank 1). The reference orders
  the rows with `torch.argsort(rank)`, which is not stable: which of the tied rows it keeps depends on the device and
  the sort kernel (not reproducible). Here the cut keeps the lower row index first (a stable sort), so the kept rows
  are the same on every device; it changes which rows are kept, not how many. With `ratio_tf` 1.0 (the default)
  every row is kept and this does not arise; `ratio_ss` 0.75 meets it whenever the cut falls inside a rank.
- Ties in the scores. The reference finds the target's position with another unstable argsort; here `true_rank`
  counts the entries strictly greater than the target (ties in the target's favour). With continuous scores such
  ties are practically absent.
- Nothing kept (every row wrong and floor(ratio * #wrong) = 0, e.g. ratio 0): the reference's batchmean over zero
  rows is 0/0 = NaN; here the term is 0.
- Cosine: the reference expands both sides to (3B, d, B) and calls `F.cosine_similarity` (eps 1e-8); here the rows
  are L2-normalised (eps 1e-8) and multiplied, the same numbers up to float rounding without the (3B, d, B) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ROTATED_PER_IMAGE = 3  # k = 1, 2, 3


def similarity_matrix(rot: Tensor, orig: Tensor, eps: float = 1e-8) -> Tensor:
    """(3B, d) rotated-row embeddings, (B, d) original-row embeddings -> (3B, B) cosine similarities."""
    return F.normalize(rot.float(), dim=1, eps=eps) @ F.normalize(orig.float(), dim=1, eps=eps).T


def source_index(num_images: int, device: torch.device | None = None) -> Tensor:
    """(3B,) the source image of each rotated row: 0, 0, 0, 1, 1, 1, ... (`rotated()` order)."""
    return torch.arange(num_images, device=device).repeat_interleave(ROTATED_PER_IMAGE)


def sskd_head_loss(sim: Tensor) -> Tensor:
    """The teacher projection head's loss: CE of the (3B, B) similarity matrix (cosines as logits, no temperature)
    against each rotated row's own source image; mean over the 3B rows."""
    return F.cross_entropy(sim, source_index(sim.shape[1], sim.device))


def true_rank(scores: Tensor, target: Tensor) -> Tensor:
    """(N,) int64: the position of `target[r]` in row r of `scores` sorted descending, i.e. the number of entries
    strictly greater than the target's (0 = the target is the argmax; ties counted in the target's favour)."""
    own = scores.gather(1, target.view(-1, 1))
    return (scores > own).sum(dim=1)


def error_level_keep(rank: Tensor, ratio: float) -> Tensor:
    """(N,) bool: the rows SSKD distils from. Every correct row (rank 0) plus the floor(ratio * #wrong) wrong rows
    with the smallest rank (least wrong), ties at the cut broken by row index (student.py: sort rows by rank, keep
    the first #correct + int(#wrong * ratio)). No host synchronisation."""
    n = rank.numel()
    wrong = (rank > 0).sum()
    count = (n - wrong) + torch.floor(wrong.double() * ratio).long()
    order = torch.sort(rank, stable=True).indices
    position = torch.empty_like(order)
    position[order] = torch.arange(n, device=rank.device)
    return position < count


def kept_kl(student: Tensor, teacher: Tensor, keep: Tensor, temperature: float) -> Tensor:
    """tau^2 * sum over kept rows of KL(softmax(teacher / tau) || softmax(student / tau)) / #kept: the reference's
    `F.kl_div(log_softmax(s / T)[keep], softmax(t / T)[keep], reduction='batchmean') * T * T`; 0 when no row is
    kept (the reference: NaN)."""
    log_p_s = F.log_softmax(student.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher.float() / temperature, dim=1)
    per_row = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    kept = keep.to(per_row.dtype)
    return (per_row * kept).sum() / kept.sum().clamp_min(1.0) * temperature**2


def sskd_transform_loss(
    student_rot: Tensor, teacher_rot: Tensor, y: Tensor, temperature: float, ratio: float
) -> tuple[Tensor, Tensor]:
    """L_tf on the (3B, C) rotated rows' logits, y the (B,) labels of the source images: tau2^2 KL on the rows kept
    by error-level ranking of the teacher's class probabilities softmax(z_t / tau2). Returns (loss, keep mask)."""
    with torch.no_grad():
        probs = F.softmax(teacher_rot.float() / temperature, dim=1)
        keep = error_level_keep(true_rank(probs, y.repeat_interleave(ROTATED_PER_IMAGE)), ratio)
    return kept_kl(student_rot, teacher_rot.detach(), keep, temperature), keep


def sskd_similarity_loss(
    student_sim: Tensor, teacher_sim: Tensor, temperature: float, ratio: float
) -> tuple[Tensor, Tensor]:
    """L_ss between the (3B, B) similarity matrices: tau3^2 KL between row softmaxes (teacher's detached) on the rows
    kept by error-level ranking of the teacher's similarities against each row's source. Returns (loss, keep)."""
    teacher_sim = teacher_sim.detach()
    with torch.no_grad():
        keep = error_level_keep(true_rank(teacher_sim, source_index(teacher_sim.shape[1], teacher_sim.device)), ratio)
    return kept_kl(student_sim, teacher_sim, keep, temperature), keep
