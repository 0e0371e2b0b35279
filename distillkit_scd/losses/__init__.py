"""The loss package's public contract: one import point for divergences, weights, TAID, signals and the
compound loss (each lives in its own module), plus the label-position helpers the trainers share.

Modules: `divergences` (per-position KL / reverse KL / TAID), `adaptive_weight` (AW), `taid_state` (TAID's
t), `teacher_signal` (cached top-k signals), `chunked_loss` (the compound loss, chunked and reference),
`chunk_kernel` (the fused per-chunk element-wise work).
"""

from __future__ import annotations

import torch

from distillkit_scd.losses.adaptive_weight import adaptive_weight
from distillkit_scd.losses.chunked_loss import (
    LossSpec,
    chunked_compound_loss,
    compound_loss_from_logits,
)
from distillkit_scd.losses.divergences import (
    DIVERGENCES,
    taid_target,
    token_divergence,
    token_kl,
    token_reverse_kl,
    token_taid_kl,
)
from distillkit_scd.losses.teacher_signal import TopKSignal, topk_signal
from distillkit_scd.schedules.taid_state import TAIDState

IGNORE_INDEX = -100

__all__ = [
    "DIVERGENCES", "IGNORE_INDEX", "LossSpec", "TAIDState", "TopKSignal", "adaptive_weight", "chunked_compound_loss",
    "compound_loss_from_logits", "label_positions", "per_token_weights", "taid_target", "token_divergence",
    "token_kl", "token_reverse_kl", "token_taid_kl", "topk_signal",
]


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of positions that predict a label, and their targets.

    Position s predicts token s+1, so targets are ``labels[:, 1:]`` and the predicting positions are
    ``[:, :-1]``. Args: labels (B, T) long, IGNORE_INDEX (-100) where no loss. Returns (flat indices into
    the (B·T) hidden-state rows, targets), both (N,) long, in row-major position order.
    """
    if labels.dim() != 2:
        raise ValueError(f"label_positions: labels must be (batch, length), got shape {tuple(labels.shape)}")
    length = labels.shape[1]
    shifted = labels[:, 1:]
    rows, cols = (shifted != IGNORE_INDEX).nonzero(as_tuple=True)  # CPU-GPU sync point (data-dependent N)
    return rows * length + cols, shifted[rows, cols]


def per_token_weights(sample_weights: torch.Tensor, flat_idx: torch.Tensor, length: int) -> torch.Tensor:
    """AW for each label token = the AW of its sample. sample_weights (B,), flat_idx (N,) → (N,)."""
    return sample_weights[torch.div(flat_idx, length, rounding_mode="floor")]
