"""SSKD's pieces: the similarity and head losses, error-level ranking and selection, the four rotated and flipped
copies, against loops and by hand."""

from __future__ import annotations

import math
import types
import zlib

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.data import mix_seed, rotate4
from ssl_kd.data.rotation import rotate_copies
from ssl_kd.losses import (
    error_level_keep,
    kept_kl,
    similarity_matrix,
    sskd_head_loss,
    sskd_similarity_loss,
    sskd_transform_loss,
    true_rank,
)
from ssl_kd.stages.sskd import VIEWS, RotationStage


# ------------------------------------------------------------------------------------------------ loop references
def loop_similarity(rot, orig):
    out = torch.zeros(len(rot), len(orig), dtype=torch.float64)
    for r in range(len(rot)):
        for j in range(len(orig)):
            a, b = rot[r].double(), orig[j].double()
            out[r, j] = (a @ b) / (a.norm() * b.norm())
    return out


def loop_rank(scores, target):
    """student.py: argsort the row descending, the target's position."""
    ranks = []
    for r in range(len(scores)):
        order = sorted(range(scores.shape[1]), key=lambda c: -float(scores[r, c]))
        ranks.append(order.index(int(target[r])))
    return ranks


def loop_keep(ranks, ratio):
    """student.py: sort rows by rank, keep the first #correct + int(#wrong * ratio) (ties by row index)."""
    wrong = sum(1 for r in ranks if r > 0)
    count = len(ranks) - wrong + int(wrong * ratio)
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    return sorted(order[:count])


def loop_batchmean_kl(s, t, rows, tau):
    """F.kl_div(log_softmax(s / T)[rows], softmax(t / T)[rows], reduction='batchmean') * T * T, written out."""
    total = 0.0
    for r in rows:
        ps = [math.exp(v / tau) for v in s[r].tolist()]
        pt = [math.exp(v / tau) for v in t[r].tolist()]
        zs, zt = sum(ps), sum(pt)
        total += sum((b / zt) * math.log((b / zt) / (a / zs)) for a, b in zip(ps, pt))
    return total / len(rows) * tau * tau


# ------------------------------------------------------------------------------------------------ losses
def test_similarity_matrix_and_head_loss_match_loops_and_the_reference_expansion():
    torch.manual_seed(0)
    b, d = 5, 7
    orig, rot = torch.randn(b, d), torch.randn(3 * b, d)
    sim = similarity_matrix(rot, orig)
    assert sim.shape == (3 * b, b)
    assert torch.allclose(sim.double(), loop_similarity(rot, orig), atol=1e-6)
    # student.py's own construction: (3B, d, B) expansions and F.cosine_similarity over d
    nor = orig.unsqueeze(2).expand(-1, -1, 3 * b).transpose(0, 2)
    aug = rot.unsqueeze(2).expand(-1, -1, b)
    assert torch.allclose(sim, F.cosine_similarity(aug, nor, dim=1), atol=1e-6)
    expected = sum(
        -math.log(math.exp(sim[r, r // 3]) / sum(math.exp(v) for v in sim[r].tolist())) for r in range(3 * b)
    )
    assert sskd_head_loss(sim).item() == pytest.approx(expected / (3 * b), rel=1e-5)


def test_head_loss_hand_computed():
    """B = 2 originals e1, e2; rotated rows of image 0: e1, e2, (e1+e2); of image 1: e2, e1, (e1-e2). Cosines as
    logits, no temperature: CE = log(1 + e^(other - own)) per row."""
    orig = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, -1.0]])
    c = 1 / math.sqrt(2)
    rows = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(1)), math.log(2)] * 2
    rows[5] = math.log(1 + math.exp(c - (-c)))
    assert sskd_head_loss(similarity_matrix(rot, orig)).item() == pytest.approx(sum(rows) / 6, rel=1e-6)


def test_error_level_ranking_on_a_hand_made_example():
    # true-class rank per row: rows 0, 2, 5 right; wrong rows 3 and 6 (rank 1), 1 (rank 2), 4 (rank 3), 7 (rank 5)
    ranks = torch.tensor([0, 2, 0, 1, 3, 0, 1, 5])
    kept = {r: torch.nonzero(error_level_keep(ranks, r)).flatten().tolist() for r in (1.0, 0.75, 0.5, 0.2, 0.0)}
    assert kept[1.0] == list(range(8))
    assert kept[0.75] == [0, 1, 2, 3, 5, 6]  # floor(5 * 0.75) = 3 least-wrong rows: 3, 6 (rank 1) and 1 (rank 2)
    assert kept[0.5] == [0, 2, 3, 5, 6]  # floor(2.5) = 2
    assert kept[0.2] == [0, 2, 3, 5]  # floor(1.0) = 1: of the tied rank-1 rows the lower index
    assert kept[0.0] == [0, 2, 5]  # only the rows the teacher gets right
    # the rank itself: the target's position in the row sorted descending
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9], [3.0, 1.0, 2.0, 0.0]])
    assert true_rank(scores, torch.tensor([2, 0])).tolist() == [2, 0]


def test_a_tie_at_the_cut_from_continuous_scores_keeps_the_lower_row_index():
    """Continuous similarities still give tied ranks: with B = 2 images every wrong row has rank 1. Rows 1, 2, 4 are
    wrong, floor(3 * 0.75) = 2 of them are kept: the stable order keeps rows 1 and 2 and drops 4 (student.py's
    unstable argsort may keep any two of the three, depending on the device)."""
    # sources of the 6 rotated rows: 0, 0, 0, 1, 1, 1; a row is right when its own source's column is the larger
    t = torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.3, 0.35], [0.1, 0.8], [0.6, 0.5], [0.4, 0.45]])
    assert true_rank(t, torch.tensor([0, 0, 0, 1, 1, 1])).tolist() == [0, 1, 1, 0, 1, 0]
    s = torch.zeros(6, 2)
    loss, keep = sskd_similarity_loss(s, t, temperature=1.0, ratio=0.75)
    assert keep.tolist() == [True, True, True, True, False, True]
    # the loss averages the kept rows only: KL(softmax(t_r) || (1/2, 1/2)) = sum p ln(2 p), rows 0, 1, 2, 3, 5

    def kl_uniform(a, b):
        p = 1.0 / (1.0 + math.exp(b - a))
        return p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))

    rows = [kl_uniform(*t[r].tolist()) for r in (0, 1, 2, 3, 5)]
    assert loss.item() == pytest.approx(sum(rows) / 5, rel=1e-5)
    # the same cut on the transform term: ranks on the teacher's class probabilities, y of the source image
    z = torch.tensor(
        [[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [3.0, 0.0, 1.0], [0.0, 1.0, 2.0]]
    )
    _, keep_tf = sskd_transform_loss(z, z, torch.tensor([0, 1]), temperature=4.0, ratio=0.5)
    # y per row 0, 0, 0, 1, 1, 1 -> ranks 0, 1, 1, 0, 2, 1: wrong rows 1, 2 (rank 1), 4 (rank 2), 5 (rank 1);
    # floor(4 * 0.5) = 2 kept: the two lowest-index rank-1 rows 1 and 2; row 5 (same rank) and 4 are dropped
    assert keep_tf.tolist() == [True, True, True, True, False, False]


def test_ranking_and_selection_match_the_loop_on_random_scores():
    torch.manual_seed(1)
    for ratio in (1.0, 0.75, 0.3, 0.0):
        scores, target = torch.randn(30, 6), torch.randint(0, 6, (30,))
        rank = true_rank(scores, target)
        assert rank.tolist() == loop_rank(scores, target)
        assert torch.nonzero(error_level_keep(rank, ratio)).flatten().tolist() == loop_keep(rank.tolist(), ratio)


def test_kept_kl_hand_computed_and_nothing_kept():
    # teacher row softmax (3/4, 1/4), student (1/2, 1/2): KL = 3/4 ln 1.5 + 1/4 ln 0.5; the second row is dropped
    s = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [-5.0, 5.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    keep = torch.tensor([True, False])
    assert kept_kl(s, t, keep, 1.0).item() == pytest.approx(kl, rel=1e-6)
    assert kept_kl(2 * s, 2 * t, keep, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)  # same softmax, x tau^2
    assert kept_kl(s, t, torch.tensor([False, False]), 1.0).item() == 0.0  # the reference: 0/0 = NaN


def test_transform_and_similarity_losses_match_student_py_written_as_loops():
    torch.manual_seed(2)
    b, c = 6, 5
    y = torch.randint(0, c, (b,))
    z_s, z_t = torch.randn(3 * b, c, requires_grad=True), 3 * torch.randn(3 * b, c)
    s_sim = torch.rand(3 * b, b, requires_grad=True)
    t_sim = torch.rand(3 * b, b)
    for ratio in (1.0, 0.75, 0.0):
        tf, keep = sskd_transform_loss(z_s, z_t, y, 4.0, ratio)
        probs = F.softmax(z_t / 4.0, dim=1)
        rows = loop_keep(loop_rank(probs, [int(y[r // 3]) for r in range(3 * b)]), ratio)
        assert torch.nonzero(keep).flatten().tolist() == rows
        assert tf.item() == pytest.approx(loop_batchmean_kl(z_s.detach(), z_t, rows, 4.0), rel=1e-5)
        ss, keep = sskd_similarity_loss(s_sim, t_sim, 0.5, ratio)
        rows = loop_keep(loop_rank(t_sim, [r // 3 for r in range(3 * b)]), ratio)
        assert torch.nonzero(keep).flatten().tolist() == rows
        assert ss.item() == pytest.approx(loop_batchmean_kl(s_sim.detach(), t_sim, rows, 0.5), rel=1e-5)
    # the student side gets the gradient; rows that are not kept get none
    z_t.requires_grad_(True)
    t_sim.requires_grad_(True)
    tf, keep = sskd_transform_loss(z_s, z_t, y, 4.0, 0.0)
    ss, _ = sskd_similarity_loss(s_sim, t_sim, 0.5, 0.75)
    (tf + ss).backward()
    assert z_t.grad is None and t_sim.grad is None
    assert (z_s.grad[~keep] == 0).all() and z_s.grad[keep].abs().sum() > 0 and s_sim.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ the four copies
def test_four_copies_rotated_and_flipped_together():
    torch.manual_seed(3)
    x = torch.randn(16, 3, 5, 5)
    assert torch.equal(rotate_copies([x] * 4), rotate4(x))
    fake = types.SimpleNamespace(shared_flip=True, name="s", progress=types.SimpleNamespace(step=0))
    fake.seed = lambda *salt: mix_seed(0, 1, *[zlib.crc32(s.encode()) for s in salt])
    part = {**{v: x for v in VIEWS}, "idx": torch.arange(16)}
    flips = []
    for step in (0, 1):
        fake.progress.step = step
        x4 = RotationStage.rotated_batch(fake, part).unflatten(0, (16, 4))
        back = [torch.rot90(x4[:, k], -k, (2, 3)) for k in range(4)]  # undo each copy's rotation
        assert all(torch.equal(back[0], b) for b in back[1:])  # the four copies of an image share the flip
        flipped = [not torch.equal(back[0][i], x[i]) for i in range(16)]
        assert all(torch.equal(back[0][i], x[i].flip(-1) if f else x[i]) for i, f in enumerate(flipped))
        flips.append(flipped)
    assert 0 < sum(flips[0]) < 16 and flips[0] != flips[1]  # a fresh draw per image and step
