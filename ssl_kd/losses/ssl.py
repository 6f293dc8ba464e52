"""Semi-supervised terms of the FixMatch family: consistency, FlexMatch thresholds, FullMatch's ANL and EML.

Restated from the reference code (TorchSSL@f26e1d4 models/{fixmatch,flexmatch}/, megvii-research/FullMatch@c54c0b9
models/fullmatch/fullmatch_utils.py, models/fullflex/fullflex_utils.py). Conventions shared by all functions:
`logits_w` (weak view) is treated as detached; `logits_s` (strong view) carries the gradient; `mask` is a
float/bool tensor over the unlabelled batch. Probabilities are computed in float32 even under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

_EPS_LOG = 1e-10  # the references' eps inside log(.) for ANL and EML
_EPS_Q = 1e-7  # the reference's eps in EML's soft target


def consistency_loss(logits_s: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's L_u = (1/B_u) sum_b mask_b CE(z^s_b, yhat_b).

    Normalised by the unlabelled batch size B_u, not by the number of masked samples (as all references do).
    `pseudo_labels` are class indices (B,) or soft targets (B, C).
    """
    log_p = F.log_softmax(logits_s.float(), dim=1)
    if pseudo_labels.ndim == 1:
        ce = -log_p.gather(1, pseudo_labels[:, None].long()).squeeze(1)
    else:
        ce = -(pseudo_labels.float() * log_p).sum(dim=1)
    return (ce * mask.float()).mean()


def topk_rank(logits_w: torch.Tensor, logits_s: torch.Tensor) -> torch.Tensor:
    """Max over the batch of the rank (1 = top) of the weak pseudo-label in the strong logits, as a 0-dim tensor.

    This is the closed form of FullMatch's `cal_topK` loop (first k whose top-k accuracy exceeds 99.99 %):
    rank_b = 1 + #{c : z^s_bc > z^s_b,yhat_b}. Kept as a tensor so the runner can take the max over ranks.
    """
    zw, zs = logits_w.detach().float(), logits_s.detach().float()
    yhat = zw.argmax(dim=1)
    target = zs.gather(1, yhat[:, None])
    return (1 + (zs > target).sum(dim=1)).max()


def adaptive_topk(logits_w: torch.Tensor, logits_s: torch.Tensor) -> int:
    """FullMatch's adaptive k for one batch: max(2, max_b rank of yhat_b in z^s_b). One host sync.

    Under DDP the stage takes the max of `topk_rank` over ranks first (the reference all-reduces the accuracy).
    """
    return max(2, int(topk_rank(logits_w, logits_s).item()))


def topk_mask(probs: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """1.0 where a class is among the top-k of its row, else 0.0. `k` may be a 0-dim tensor (e.g. the adaptive k
    max-reduced across ranks), which needs no host sync: membership is then rank < k, with ranks from a stable
    descending sort (the same set as `topk` unless two probabilities tie exactly)."""
    if not isinstance(k, torch.Tensor):
        return torch.zeros_like(probs).scatter_(1, probs.topk(k, dim=1).indices, 1.0)
    order = probs.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(probs.shape[1], device=probs.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return (ranks < k).to(probs.dtype)


def anl_loss(logits_w: torch.Tensor, logits_s: torch.Tensor, k: int | torch.Tensor, tau: float = 0.95) -> torch.Tensor:
    """Adaptive Negative Learning, on every unlabelled sample (no confidence mask).

    The negatives of sample b are the C - k classes outside the weak view's top-k; a negative whose strong
    probability already exceeds tau^2 is dropped. L = (1/B_u) sum_b sum_{c in N_b, p^s_bc <= tau^2} -log(1 - p^s_bc).
    """
    p_w = F.softmax(logits_w.detach().float(), dim=1)
    p_s = F.softmax(logits_s.float(), dim=1)
    negatives = 1.0 - topk_mask(p_w, k)
    keep = negatives * (p_s.detach() <= tau**2)
    return (keep * -torch.log(1.0 - p_s + _EPS_LOG)).sum(dim=1).mean()


def eml_loss(
    logits_w: torch.Tensor,
    logits_s: torch.Tensor,
    k: int | torch.Tensor,
    mask: torch.Tensor,
    tau: float = 0.95,
    detach_target: bool = False,
) -> torch.Tensor:
    """Entropy Meaning Loss, on the selected (masked) samples only.

    The k - 1 runner-up classes of the weak view (top-k minus the pseudo-label) are pushed towards one shared
    soft target q_b = (1 - sum_{c not candidate} p^s_bc) / (k - 1), i.e. towards equal probability, by a binary
    CE per (sample, candidate) entry; entries with p^s > tau^2 are dropped. Mean over the active entries.
    The reference does not stop the gradient through q (`detach_target=False`).
    """
    p_w = F.softmax(logits_w.detach().float(), dim=1)
    p_s = F.softmax(logits_s.float(), dim=1)
    candidates = topk_mask(p_w, k)
    candidates.scatter_(1, p_w.argmax(dim=1, keepdim=True), 0.0)
    q = (1.0 - (p_s * (1.0 - candidates)).sum(dim=1, keepdim=True) + _EPS_Q) / (k - 1)
    if detach_target:
        q = q.detach()
    active = candidates * mask.float()[:, None] * (p_s.detach() <= tau**2)
    bce = -(q * torch.log(p_s + _EPS_LOG) + (1.0 - q) * torch.log(1.0 - p_s + _EPS_LOG))
    return (active * bce).sum() / (active.sum() + _EPS_LOG)


def convex_mapping(beta: torch.Tensor) -> torch.Tensor:
    """FlexMatch's M(x) = x / (2 - x): low thresholds for classes that are still learning."""
    return beta / (2.0 - beta)


def history_counts(selected_label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C + 1,) int64: [# never selected (-1), # last selected as class 0, ..., class C - 1]. A scatter-add into a
    fixed number of bins, not `torch.bincount`, which reads the labels' max on the host (a sync on CUDA)."""
    bins = selected_label.long() + 1
    return torch.zeros(num_classes + 1, dtype=torch.long, device=bins.device).index_add_(0, bins, torch.ones_like(bins))


def flexmatch_beta(
    selected_label: torch.Tensor, num_classes: int, warmup: bool = True, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """Learning effect beta_c from the history (-1 = never selected), on the device (`counts`: its
    `history_counts`, when the caller has them).

    With warm-up, the count of unused samples takes part in the normaliser, so thresholds rise slowly while
    most of the data has never been confidently predicted. At the start (all unused) beta = 0.
    """
    counts = (history_counts(selected_label, num_classes) if counts is None else counts).float()
    unused, per_class = counts[0], counts[1:]
    denom = torch.maximum(unused, per_class.max()) if warmup else per_class.max()
    return per_class / denom.clamp_min(1.0)


def flexmatch_class_thresholds(
    selected_label: torch.Tensor, num_classes: int, tau: float = 0.95, warmup: bool = True
) -> torch.Tensor:
    """Per-class threshold tau * M(beta_c) (the reference's convex mapping), shape (C,)."""
    return tau * convex_mapping(flexmatch_beta(selected_label, num_classes, warmup))


# ----------------------------------------------------------------------------------------------------------------
# USB's algorithms (microsoft/Semi-supervised-learning, semilearn 0.3.2 = USB@1ef4cbe, semilearn/algorithms/*):
# the formulas of their masking, alignment and extra-loss hooks, as pure functions of tensors (no state, no sync).

_EPS_DA = 1e-6  # DistAlignEMAHook's eps in p_target / p_model
_EPS_FAIR = 1e-12  # FreeMatch's eps inside log of the fairness term


def ema_(old: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """USB's EMA of a statistic, old * m + new * (1 - m), in that operand order (the hooks' arithmetic)."""
    return old * momentum + new * (1.0 - momentum)


def align_distribution(probs: torch.Tensor, p_target: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """Distribution alignment (ReMixMatch / AdaMatch / SoftMatch; USB hooks/dist_align.py DistAlignEMAHook):
    p * (p_target + 1e-6) / (p_model + 1e-6), renormalised per row."""
    aligned = probs * (p_target + _EPS_DA) / (p_model + _EPS_DA)
    return aligned / aligned.sum(dim=-1, keepdim=True)


def freematch_mask(probs: torch.Tensor, time_p: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """FreeMatch's self-adaptive threshold (USB freematch/utils.py): sample b passes when
    max p_b >= tau_t * p_model[yhat_b] / max_c p_model[c] (global tau_t times the max-normalised local threshold)."""
    conf, yhat = probs.max(dim=-1)
    local = p_model / p_model.max(dim=-1)[0]
    return conf.ge(time_p * local[yhat]).to(conf.dtype)


def _inverse_or_zero(x: torch.Tensor) -> torch.Tensor:
    inv = 1.0 / x
    return torch.where(torch.isinf(inv), torch.zeros_like(inv), inv)


def freematch_fairness_loss(
    logits_s: torch.Tensor,
    mask: torch.Tensor,
    p_model: torch.Tensor,
    label_hist: torch.Tensor,
    total: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness term on the selected samples (USB freematch.py `entropy_loss`):

        h_s = histogram of argmax p^s over the selected samples (normalised), pbar_s = mean p^s over them,
        L_f = sum_c SumNorm(p_model / label_hist)_c log(SumNorm(pbar_s / h_s)_c + 1e-12)   (1/x = 0 where x = 0)

    Computed with mask weights instead of boolean indexing (no host sync); 0 when nothing is selected (USB skips
    the term then). `mask` must be 0/1. `total` turns this process's sums (count, histogram, sum of p^s) into the
    global batch's (the caller's collective); by default the batch is the whole batch.
    """
    total = total or (lambda x: x)
    sel = mask.detach().float()
    p_s = F.softmax(logits_s.float(), dim=-1)
    count = total(sel.sum())
    hist_s = total(torch.zeros_like(p_model).index_add_(0, p_s.argmax(dim=-1), sel))
    hist_s = hist_s / count.clamp_min(1.0)
    prob_model = p_model.reshape(1, -1) * _inverse_or_zero(label_hist.reshape(1, -1))
    prob_model = prob_model / prob_model.sum(dim=-1, keepdim=True)
    mean_s = total((p_s * sel[:, None]).sum(dim=0, keepdim=True)) / count.clamp_min(1.0)
    mean_s = mean_s * _inverse_or_zero(hist_s).detach()
    mean_s = mean_s / mean_s.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(mean_s.dtype).tiny)
    loss = (prob_model * torch.log(mean_s + _EPS_FAIR)).sum(dim=1).mean()
    return torch.where(count > 0, loss, torch.zeros_like(loss))


def softmatch_weights(probs: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, n_sigma: float) -> torch.Tensor:
    """SoftMatch's truncated Gaussian (USB softmatch/utils.py): w_b = exp(-min(conf_b - mu, 0)^2 / (2 var / n^2));
    1 for every sample at or above the mean confidence mu."""
    conf = probs.max(dim=-1)[0]
    return torch.exp(-((torch.clamp(conf - mu, max=0.0) ** 2) / (2 * var / (n_sigma**2))))


def adamatch_mask(probs_u: torch.Tensor, probs_l: torch.Tensor, tau: float) -> torch.Tensor:
    """AdaMatch's relative threshold (USB adamatch/utils.py): max p^u_b >= tau * mean_b' max p^l_b'."""
    cutoff = probs_l.max(dim=-1)[0].mean() * tau
    conf = probs_u.max(dim=-1)[0]
    return conf.ge(cutoff).to(conf.dtype)


def dash_rho(rho_init: torch.Tensor, updates: int, c: float, gamma: float, rho_min: float) -> torch.Tensor:
    """Dash's threshold after `updates` decays (USB dash/utils.py): max(C gamma^-n rho_init, rho_min)."""
    return torch.clamp(c * (gamma ** (-updates)) * rho_init, min=rho_min)


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample CE against class indices (B,) or soft targets (B, C), in float32 (USB's ce_loss, reduction none)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    if targets.ndim == 1:
        return -log_p.gather(1, targets[:, None].long()).squeeze(1)
    return -(targets.float() * log_p).sum(dim=1)


def weighted_consistency(
    logits_s: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None, kind: str = "ce"
) -> torch.Tensor:
    """L_u = (1/B) sum_b w_b l(z_b, t_b) with l = CE (`ce`), the mean squared error between softmax(z) and the
    target probabilities (`mse`, Pi-model / Mean Teacher: USB consistency_loss 'mse') or KL(t || softmax(z))
    (`kl`: CE minus the target's entropy, the same gradient as `ce`)."""
    if kind == "ce":
        return consistency_loss(logits_s, targets, torch.ones(()) if mask is None else mask)
    if targets.ndim == 1:
        targets = F.one_hot(targets.long(), logits_s.shape[1]).float()
    if kind == "mse":
        loss = F.mse_loss(F.softmax(logits_s.float(), dim=-1), targets.float(), reduction="none").mean(dim=1)
    elif kind == "kl":
        t = targets.float()
        loss = soft_ce(logits_s, t) + (t * torch.log(t.clamp_min(torch.finfo(t.dtype).tiny))).sum(dim=1)
    else:
        raise ValueError(f"unknown consistency loss {kind!r}; valid: ce, mse, kl")
    return (loss if mask is None else loss * mask.float()).mean()


def tsa_threshold(schedule: str, progress: float, num_classes: int) -> float:
    """UDA's training-signal-annealing threshold (USB uda.py `TSA`): a labelled sample enters the supervised loss
    while its max probability is <= this; `none` = 1 (every sample)."""
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        threshold = progress
    elif schedule == "exp":
        threshold = math.exp((progress - 1) * 5)
    elif schedule == "log":
        threshold = 1 - math.exp(-progress * 5)
    else:
        raise ValueError(f"unknown TSA schedule {schedule!r}; valid: none, linear, exp, log")
    return threshold * (1 - 1 / num_classes) + 1 / num_classes
