"""Cached teacher signals: top-k log-probs plus the exact tail mass, and their dense approximation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distillkit_scd.losses.divergences import _log_probs

_TAIL_FLOOR = -1e4  # log-prob floor of cached tail tokens: exp() is 0 but 0·log stays finite (no NaN)


@dataclass
class TopKSignal:
    """A cached teacher distribution at T = 1: top-k log-probs (N, k), their token ids (N, k), and
    optionally the exact log of the mass outside the top k (N,).

    Approximation p̃: the top-k entries exact, the tail mass m spread uniformly over the other V − k tokens
    (when `tail_logmass` is None, m = 1 − Σ top-k probs). The loss applies its temperature to log p̃ as to
    logits. Error of the forward KL against the full teacher p, per position (tested):
    |KL(p‖q) − KL(p̃‖q)| ≤ m·log(V − k) + 2m·max_{v∉top-k} |log q_v|; it vanishes at k = V.
    """

    logprobs: torch.Tensor
    indices: torch.Tensor
    tail_logmass: torch.Tensor | None = None

    def dense_logprobs(self, rows: slice, vocab_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """(n, V) float32 log p̃ for the given rows (written into `out`, an (n, V) buffer, when given)."""
        lp = self.logprobs[rows].float()
        idx = self.indices[rows].long()
        k = lp.shape[-1]
        if self.tail_logmass is not None:
            tail = self.tail_logmass[rows].float()
        else:
            tail = torch.log1p(-lp.exp().sum(-1).clamp(max=1.0))  # −inf when the top k hold all the mass
        fill = (tail - math.log(max(vocab_size - k, 1))).clamp_min(_TAIL_FLOOR)  # (n,)
        if out is None:
            out = fill.unsqueeze(-1).expand(lp.shape[0], vocab_size).clone()
        else:
            out.copy_(fill.unsqueeze(-1))
        out.scatter_(1, idx.to(out.device), lp.to(out))
        return out


def topk_signal(teacher_logits: torch.Tensor, k: int) -> TopKSignal:
    """Compress teacher logits (N, V) into a `TopKSignal` (T = 1) with the exact tail log-mass."""
    if not 1 <= k:
        raise ValueError(f"topk_signal: k must be >= 1, got {k!r}")
    lp = _log_probs(teacher_logits, 1.0)
    k = min(k, lp.shape[-1])
    values, indices = lp.topk(k, dim=-1)
    tail = torch.logsumexp(lp.scatter(1, indices, float("-inf")), dim=-1)  # (N,), −inf at k = V
    return TopKSignal(values, indices.to(torch.int32), tail)
