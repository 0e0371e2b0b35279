"""Adaptive Weighting's per-sample distillation weight (paper section 6): AW = L_S / (L_S + L_T)."""

from __future__ import annotations

import torch


def adaptive_weight(student_seq_loss, teacher_seq_loss):
    """AW = σ(log(L_S / L_T)) = L_S / (L_S + L_T), elementwise (broadcasting), in float64.

    Computed as the sigmoid of a log-ratio: no overflow or cancellation for tiny or huge losses.
    Zeros: both 0 (both models perfect, or a sample without label tokens) gives 0.5; only L_S = 0 gives 0
    (keep CE); only L_T = 0 gives 1 (distill). Floats in → float out; tensors in → tensor out.

    Raises:
        ValueError: on negative or non-finite losses (sequence CE is never negative).
    """
    scalar = not isinstance(student_seq_loss, torch.Tensor) and not isinstance(teacher_seq_loss, torch.Tensor)
    ls = torch.as_tensor(student_seq_loss, dtype=torch.float64)
    lt = torch.as_tensor(teacher_seq_loss, dtype=torch.float64)
    for name, x in (("student_seq_loss", ls), ("teacher_seq_loss", lt)):
        bad = ~torch.isfinite(x) | (x < 0)
        if bool(bad.any()):
            raise ValueError(f"adaptive_weight: {name} must be finite and >= 0, got {x[bad].flatten()[0].item()!r}"
                             f" at flat index {int(bad.flatten().nonzero()[0])}")
    weight = torch.sigmoid(torch.log(ls) - torch.log(lt))  # ±inf when one side is 0: sigmoid gives 0 or 1
    weight = torch.where((ls == 0) & (lt == 0), torch.full_like(weight, 0.5), weight)
    return float(weight) if scalar and weight.dim() == 0 else weight

