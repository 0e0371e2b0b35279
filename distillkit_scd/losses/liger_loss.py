"""Optional fused loss path: Liger-Kernel's chunked `LigerFusedLinearJSDLoss` for TD-style losses.

`distill.fused_loss: liger` swaps our chunked compound loss (`losses.chunked_compound_loss`) for Liger's,
where Liger-Kernel is installed (`pip install liger-kernel`). It covers what Liger's loss can express
exactly: a fixed α (TD, CD, SCD) with forward KL (Liger's β = 0) or reverse KL (β = 1), an online teacher,
training steps. TAID (p_t depends on t and the student), AW (per-sample weights), cached top-k signals and
the validation loss (no gradients needed) stay on our path in the same run (`liger_applies`).

Our loss per label token is ``α·T²·KL_T + (1−α)·CE`` summed and divided by `num_items` (the accumulated
batch's label tokens). Liger computes ``w_soft·KL_T + w_hard·CE`` averaged over the N label tokens it is
given, with CE at T = 1 and no T² factor: so w_soft = α·T², w_hard = 1 − α, and the mean is rescaled by
N / num_items. Values and gradients equal our path (tests/test_liger_loss.py, where Liger is installed).
"""

from __future__ import annotations

import importlib.util
import inspect

import torch

from distillkit_scd.losses import IGNORE_INDEX, LossSpec
from distillkit_scd.losses.chunked_loss import _denominator, _parts

LIGER_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}  # Liger's generalised JSD at its endpoints


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_applies(divergence: str, use_aw: bool, cached: bool) -> bool:
    """Whether Liger's loss expresses this run's loss exactly: forward/reverse KL with a fixed α and an
    online teacher (not TAID, not AW, not cached signals)."""
    return divergence in LIGER_BETA and not use_aw and not cached


def check_liger_available() -> None:
    """Raise ValueError naming `distill.fused_loss` when Liger-Kernel is not installed or too old."""
    if not liger_available():
        raise ValueError("distill.fused_loss: 'liger' needs Liger-Kernel: pip install liger-kernel "
                         "(or the extra: pip install 'distillkit-scd[liger]')")
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    if "return_soft_hard_loss" not in inspect.signature(LigerFusedLinearJSDLoss).parameters:
        raise ValueError("distill.fused_loss: this Liger-Kernel cannot return the loss terms separately; "
                         "upgrade: pip install -U liger-kernel")


def liger_compound_loss(student_hidden: torch.Tensor, student_lm_head: torch.Tensor, targets: torch.Tensor,
                        spec: LossSpec, teacher_hidden: torch.Tensor, teacher_lm_head: torch.Tensor,
                        num_items: int | torch.Tensor | None = None, compiled: bool | None = None,
                        student_bias: torch.Tensor | None = None, teacher_bias: torch.Tensor | None = None):
    """Our compound loss (fixed α, forward or reverse KL) computed by Liger-Kernel's fused chunked loss.

    Args:
        student_hidden: (N, H) final hidden states at label positions, with grad.
        student_lm_head: (V, H) lm_head weight. teacher_hidden / teacher_lm_head: (N, H_t), (V, H_t).
        targets: (N,) next-token ids. num_items: normaliser (defaults to N).
        compiled: torch.compile Liger's chunk function (default: only on CUDA).
        student_bias / teacher_bias: (V,) optional lm_head biases.
    Returns: (loss scalar, parts dict of detached sums as `losses.chunked_compound_loss`).
    Raises: ValueError for a divergence Liger cannot express (call `check_liger_available` first).
    """
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    if spec.divergence not in LIGER_BETA:
        raise ValueError(f"liger_compound_loss: divergence {spec.divergence!r} is not forward_kl or reverse_kl")
    n = targets.shape[0]
    if n == 0:  # an all-ignored micro-batch: zero loss still connected to the graph (DDP)
        zero = (student_hidden.sum() + student_lm_head.sum()) * 0.0
        return zero, _parts(zero, zero, zero, 0)
    t = spec.temperature
    fn = LigerFusedLinearJSDLoss(weight_hard_loss=1.0 - spec.alpha, weight_soft_loss=spec.alpha * t * t,
                                 beta=LIGER_BETA[spec.divergence], ignore_index=IGNORE_INDEX, temperature=t,
                                 compiled=student_hidden.is_cuda if compiled is None else compiled,
                                 chunk_size=spec.chunk_size, return_soft_hard_loss=True)
    loss, soft, hard = fn(student_hidden, student_lm_head, teacher_hidden.detach(), teacher_lm_head.detach(),
                          targets, student_bias, None if teacher_bias is None else teacher_bias.detach())
    denom = _denominator(num_items, n, loss.dtype, loss.device)
    loss = loss * n / denom  # Liger's mean over these N tokens → our sum / num_items
    weight_sum = torch.full((), spec.alpha * n, device=student_hidden.device)
    return loss, _parts(soft.detach() * (n * t * t), hard.detach() * n, weight_sum, n)
