"""Losses: Dirichlet-multinomial negative log-likelihood on vote counts (Zoobot, Walmsley et al.)."""

from __future__ import annotations

import torch

from geocnn.data.schema import DecisionTree


def dirichlet_multinomial_nll(counts: torch.Tensor, alpha: torch.Tensor, tree: DecisionTree) -> torch.Tensor:
    """Mean over the batch of the summed per-question Dirichlet-multinomial negative log-likelihood.

    For one question with counts c_k (total N) and concentrations a_k (total A):
    log p = lgamma(N + 1) + lgamma(A) - lgamma(N + A) + sum_k [lgamma(c_k + a_k) - lgamma(a_k) - lgamma(c_k + 1)].
    Questions nobody answered (N = 0) contribute 0, so unasked questions cost nothing.
    """
    total = torch.zeros(counts.shape[0], dtype=alpha.dtype, device=alpha.device)
    for start, stop, _ in tree.slices():
        c = counts[:, start:stop].to(alpha.dtype)
        a = alpha[:, start:stop]
        n, a_sum = c.sum(1), a.sum(1)
        log_p = (torch.lgamma(n + 1) + torch.lgamma(a_sum) - torch.lgamma(n + a_sum)
                 + (torch.lgamma(c + a) - torch.lgamma(a) - torch.lgamma(c + 1)).sum(1))
        total = total - log_p
    return total.mean()


def expected_fractions(alpha: torch.Tensor, tree: DecisionTree) -> torch.Tensor:
    """Mean vote fractions under the Dirichlet: a_k / sum(a) within each question."""
    parts = [alpha[:, s:e] / alpha[:, s:e].sum(1, keepdim=True) for s, e, _ in tree.slices()]
    return torch.cat(parts, dim=1)
