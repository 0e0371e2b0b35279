"""Per-position divergences between student and teacher distributions (no reduction): (..., V) → (...,).

Every divergence is computed between the distributions at temperature T and multiplied by T² (Hinton et al.
2015), so its gradient keeps the same scale as at T = 1. These are the plain autograd definitions the
chunked loss (`chunked_loss`) is tested against, and what the DistillKit integration calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "taid")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 for softmax and sums (bf16 logits lose the tail); float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(_acc_dtype(x.dtype))


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(_upcast(logits) / temperature, dim=-1)


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Forward KL(p_teacher ‖ q_student) per position, times T² (Hinton) so gradients keep their scale.

    Args:
        student_logits: (..., V), gradients flow. teacher_logits: (..., V) logits or log-probs, detached.
    Returns: (...,) in float32 (float64 for float64 input). Logits must be finite.
    """
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits.detach(), temperature)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2


def token_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL(q_student ‖ p_teacher) per position, times T². Shapes and dtype as `token_kl`."""
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits.detach(), temperature)
    return (log_q.exp() * (log_q - log_p)).sum(-1) * temperature**2


def taid_target(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """Log-probs (..., V) of TAID's p_t = softmax((1−t)·stopgrad(z_s) + t·z_t) (Shing et al. 2025, eq. 5).

    Teacher log-probs may stand in for logits: a per-row constant shift does not change the softmax.
    """
    _check_t(t)
    mixed = (1.0 - t) * _upcast(student_logits.detach()) + t * _upcast(teacher_logits.detach())
    return F.log_softmax(mixed, dim=-1)


def token_taid_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float,
                  temperature: float = 1.0) -> torch.Tensor:
    """TAID loss KL(p_t ‖ q_student) per position; p_t mixes the logits divided by T; times T²."""
    log_q = _log_probs(student_logits, temperature)
    log_pt = taid_target(student_logits / temperature, teacher_logits / temperature, t)
    return (log_pt.exp() * (log_pt - log_q)).sum(-1) * temperature**2


def token_divergence(kind: str, student_logits, teacher_logits, temperature: float = 1.0, taid_t: float = 1.0):
    """Dispatch on `kind` ∈ {forward_kl, reverse_kl, taid}; (..., V) → (...,)."""
    if kind == "forward_kl":
        return token_kl(student_logits, teacher_logits, temperature)
    if kind == "reverse_kl":
        return token_reverse_kl(student_logits, teacher_logits, temperature)
    if kind == "taid":
        return token_taid_kl(student_logits, teacher_logits, taid_t, temperature)
    raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {kind!r}")


def _check_t(t) -> None:
    if not isinstance(t, torch.Tensor) and not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"taid t: expected a number in [0, 1], got {t!r}")

