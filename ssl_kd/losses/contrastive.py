"""Contrastive losses against per-sample memory banks (CTC: DTennant/dt-tradeoff@a36516be ctc/).

- Instance discrimination (Wu et al. 2018): a softmax over all N memory rows, the target is the sample's own row.
- CRD's binary NCE (Tian et al. 2020, eq. 18): the positive row and K sampled negative rows, each scored as
  exp(m . v / T) / Z and classified against the noise K/N. CTC's reference uses this NCE form for its stage 2,
  although the paper frames the term as InfoNCE.

The memory is read, never differentiated: gradients flow only into the anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NCE_EPS = 1e-7  # CRD's `eps` in the NCE denominators


def instance_discrimination_loss(
    features: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Non-parametric instance discrimination: with f = normalize(features) (B, D), logits = f M^T / temperature
    over all N rows of `memory` (N, D), cross-entropy against each sample's own row `idx`; batch mean."""
    f = F.normalize(features, dim=1)
    logits = f @ memory.detach().t() / temperature
    return F.cross_entropy(logits, idx)


def contrast_exp_scores(
    anchors: torch.Tensor, memory: torch.Tensor, contrast_idx: torch.Tensor, temperature: float
) -> torch.Tensor:
    """exp(M[contrast_idx[b, k]] . anchors[b] / temperature), shape (B, K+1): CRD's unnormalised scores.

    Computed as the (B, N) product with the whole bank and a gather when the sampled rows are at least a quarter
    of the bank (CTC: K+1 = 16385 of 50,000; it never materialises the B x (K+1) x D block the reference does),
    else by gathering the rows first. Both give the same dot products.
    """
    memory = memory.detach()
    if contrast_idx.shape[1] * 4 >= memory.shape[0]:
        dots = (anchors @ memory.t()).gather(1, contrast_idx)
    else:
        dots = torch.bmm(memory[contrast_idx], anchors.unsqueeze(2)).squeeze(2)
    return torch.exp(dots / temperature)


def nce_normaliser(exp_scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """CRD's Z for one view: mean of the unnormalised scores times N (the reference fixes it on the first batch)."""
    return exp_scores.detach().float().mean() * num_data


def crd_nce_loss(scores: torch.Tensor, num_data: int, eps: float = NCE_EPS) -> torch.Tensor:
    """CRD's binary NCE with noise distribution 1/N. `scores` (B, K+1) are exp(.)/Z with the positive in column 0:

    L = -1/B sum_b [ log(u_b0 / (u_b0 + K/N + eps)) + sum_{k>=1} log((K/N) / (u_bk + K/N + eps)) ]
    """
    k = scores.shape[1] - 1
    noise = k / num_data
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]
