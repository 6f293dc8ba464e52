"""MCL, Mutual Contrastive Learning (Yang et al., AAAI 2022; winycg/MCL losses/cifar_sup_mcl_loss.py).

For N networks with L2-normalised embeddings e_i (B x d) and temperature tau:

    S_ij = e_i e_j^T / tau                                     (inter-network when i != j, intra when i == j)
    log_prob[a, k] = S[a, k] - log sum_{k' != a} exp S[a, k']  (the anchor's own column left out of the sum)
    sup_con(S) = - mean_a [ sum_{k != a, y_k = y_a} log_prob[a, k] / #{k != a : y_k = y_a} ]
    ICL      = sum over ordered pairs (i, j), i != j, of sup_con(S_ij)
    VCL      = sum_i sup_con(S_ii)
    soft ICL = sum_{i<j} KL_T(S_ij || sg(S_ji)) + KL_T(S_ji || sg(S_ij))
    soft VCL = sum_{i != j} KL_T(S_ii || sg(S_jj))
    KL_T(s || t) = T^2 KL(softmax(t / T) || softmax(s / T)), batch mean (the reference's KLDiv)

Reference conventions kept: in the inter-network matrices too, the positives exclude column a (the same image
seen by the other network) and the denominator leaves out column a; the soft terms compare whole rows, diagonal
included; an anchor with no positive gives 0/0 = NaN as in the reference (the class-aware sampler, m >= 2,
guarantees positives). The soft terms' targets are detached; nothing else is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def similarity_logits(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """a b^T / tau: row r scores anchor a[r] against every b[k]."""
    return a @ b.t() / tau


def sup_contrastive_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """- mean over anchors of the mean log-probability of their positives (same label, other column), the
    probability normalised over every column but the anchor's own (the reference's `diag_mask`)."""
    n = logits.shape[0]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=logits.device)
    positives = (labels[:, None] == labels[None, :]) & off_diag
    # log sum_{k != a} exp S[a, k], computed stably (the reference's exp-then-sum equals it for |S| <= 1 / tau)
    log_denominator = torch.logsumexp(logits.masked_fill(~off_diag, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    pos = positives.to(logits.dtype)
    return -((pos * log_prob).sum(1) / pos.sum(1)).mean()


def kl_t(student_logits: Tensor, target_logits: Tensor, temperature: float) -> Tensor:
    """T^2 KL(softmax(target / T) || softmax(student / T)), summed over classes, averaged over rows."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(target_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def mcl_losses(
    embeddings: list[Tensor], labels: Tensor, tau: float = 0.1, temperature: float = 3.0
) -> dict[str, Tensor]:  # fmt: skip
    """{"vcl", "soft_vcl", "icl", "soft_icl"} for N >= 2 networks' normalised embeddings (each B x d)."""
    n = len(embeddings)
    if n < 2:
        raise ValueError(f"MCL needs at least two networks, got {n}")
    icl = soft_icl = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            s_ij = similarity_logits(embeddings[i], embeddings[j], tau)
            s_ji = similarity_logits(embeddings[j], embeddings[i], tau)
            icl = icl + sup_contrastive_loss(s_ij, labels) + sup_contrastive_loss(s_ji, labels)
            soft_icl = soft_icl + kl_t(s_ij, s_ji.detach(), temperature) + kl_t(s_ji, s_ij.detach(), temperature)
    intra = [similarity_logits(e, e, tau) for e in embeddings]
    vcl = sum(sup_contrastive_loss(s, labels) for s in intra)
    soft_vcl = sum(kl_t(intra[i], intra[j].detach(), temperature) for i in range(n) for j in range(n) if i != j)
    return {"vcl": vcl, "soft_vcl": soft_vcl, "icl": icl, "soft_icl": soft_icl}


def ensemble_kd_loss(logits: list[Tensor], temperature: float = 3.0, all_peers: bool | None = None) -> Tensor:
    """MCL's optional `--logit-distill`: KL_T of peers to the detached mean logits. The reference distils both
    peers when N = 2 and only the last peer when N > 2 (main_cifar.py); `all_peers` overrides that choice."""
    target = torch.stack(logits).mean(0).detach()
    every = len(logits) == 2 if all_peers is None else all_peers
    peers = logits if every else logits[-1:]
    return sum(kl_t(z, target, temperature) for z in peers)
