"""Distillation losses as pure tensor functions, and the chunked compound loss the trainer calls.

Per label token the compound loss is ``w·D(p‖q) + (1−w)·CE`` (paper eq. for TD/CD/SCD; AW sets ``w`` per
sample), summed over label tokens and divided by ``num_items`` — the label-token count of the whole
accumulated (and, where enabled, all-process) batch — so gradient accumulation does not change results.

Vocabularies are large (Llama 3: 128,256): full fp32 logits for 4,096 tokens are 2.1 GB per model. The
chunked path takes the *hidden states* at label positions and the lm_head weights and computes logits,
loss and gradients one chunk of positions at a time inside a custom autograd function (the approach of
Liger-Kernel's fused linear losses), so peak memory is O(chunk_size·V), not O(N·V).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
DIVERGENCES = ("forward_kl", "reverse_kl", "taid")


# --------------------------------------------------------------------------------------------------
# Per-position divergences (no reduction). Shapes: logits (..., V) → (...,).
# --------------------------------------------------------------------------------------------------


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 for softmax and sums (bf16 logits lose the tail); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(_upcast(logits) / temperature, dim=-1)


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Forward KL(p_teacher ‖ q_student) per position, times T² (Hinton et al.) so gradients keep scale.

    Args:
        student_logits: (..., V), gradients flow. teacher_logits: (..., V), treated as constant.
    Returns: (...,) float32.
    """
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits.detach(), temperature)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2


def token_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL(q_student ‖ p_teacher) per position, times T². Shapes as `token_kl`."""
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits.detach(), temperature)
    return (log_q.exp() * (log_q - log_p)).sum(-1) * temperature**2


def taid_target(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """Log-probs of TAID's intermediate p_t = softmax((1−t)·stopgrad(z_s) + t·z_t) (Shing et al. 2025).

    Teacher log-probs may stand in for logits: a per-row constant shift does not change the softmax.
    """
    mixed = (1.0 - t) * _upcast(student_logits.detach()) + t * _upcast(teacher_logits.detach())
    return F.log_softmax(mixed, dim=-1)


def token_taid_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float,
                  temperature: float = 1.0) -> torch.Tensor:
    """KL(p_t ‖ q_student) per position, with p_t from `taid_target` at the given temperature, times T²."""
    log_q = _log_probs(student_logits, temperature)
    log_pt = taid_target(student_logits / temperature, teacher_logits / temperature, t)
    return (log_pt.exp() * (log_pt - log_q)).sum(-1) * temperature**2


def token_divergence(kind: str, student_logits, teacher_logits, temperature: float = 1.0, taid_t: float = 1.0):
    """Dispatch on `kind` ∈ {forward_kl, reverse_kl, taid}."""
    if kind == "forward_kl":
        return token_kl(student_logits, teacher_logits, temperature)
    if kind == "reverse_kl":
        return token_reverse_kl(student_logits, teacher_logits, temperature)
    if kind == "taid":
        return token_taid_kl(student_logits, teacher_logits, taid_t, temperature)
    raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {kind!r}")


# --------------------------------------------------------------------------------------------------
# Adaptive Weighting (paper section 6) and TAID's adaptive t.
# --------------------------------------------------------------------------------------------------


def adaptive_weight(student_seq_loss, teacher_seq_loss):
    """AW = σ(log(L_S / L_T)) = L_S / (L_S + L_T), elementwise.

    Computed as a sigmoid of a log-ratio, which is stable for tiny and huge losses. Both zero (both
    models perfect on the sample) gives 0.5; only L_S zero gives 0 (keep CE); only L_T zero gives 1.

    Raises:
        ValueError: on negative or non-finite losses (sequence CE is never negative).
    """
    ls = torch.as_tensor(student_seq_loss, dtype=torch.float64)
    lt = torch.as_tensor(teacher_seq_loss, dtype=torch.float64)
    if bool((ls < 0).any() | (lt < 0).any() | ~torch.isfinite(ls).all() | ~torch.isfinite(lt).all()):
        raise ValueError("adaptive_weight: sequence losses must be finite and >= 0")
    ratio = torch.log(ls) - torch.log(lt)  # ±inf when one side is 0; sigmoid handles it
    weight = torch.sigmoid(ratio)
    return torch.where((ls == 0) & (lt == 0), torch.full_like(weight, 0.5), weight)


@dataclass
class TAIDState:
    """TAID's adaptive interpolation t, updated once per optimizer step (official rule, SakanaAI/TAID).

    After a step with loss L: rel = (L_prev − L)/(L_prev + 1e−15); m ← β·m + (1−β)·rel;
    t ← min(t_end, max(t_start + (t_end − t_start)·step/total_steps, t + α·σ(m)·(1−t))).
    The first update only records L_prev. The state (t, m, L_prev) is saved with trainer checkpoints.
    """

    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99
    t: float | None = None
    momentum: float = 0.0
    prev_loss: float | None = None

    def __post_init__(self):
        if not 0 <= self.t_start <= self.t_end <= 1:
            raise ValueError(f"TAIDState: need 0 <= t_start <= t_end <= 1, got t_start={self.t_start}, "
                             f"t_end={self.t_end}")
        if self.alpha <= 0 or not 0 <= self.beta < 1:
            raise ValueError(f"TAIDState: need alpha > 0 and 0 <= beta < 1, got alpha={self.alpha}, "
                             f"beta={self.beta}")
        if self.t is None:
            self.t = self.t_start

    def update(self, loss: float, step: int, total_steps: int) -> float:
        """Advance t after optimizer step `step` (1-based count of finished steps) of `total_steps`."""
        loss = float(loss)
        if self.prev_loss is None:
            self.prev_loss = loss
            return self.t
        rel = (self.prev_loss - loss) / (self.prev_loss + 1e-15)
        self.momentum = self.beta * self.momentum + (1 - self.beta) * rel
        delta = self.alpha * (1 / (1 + math.exp(-self.momentum))) * (1 - self.t)
        floor = self.t_start + (self.t_end - self.t_start) * step / max(total_steps, 1)
        self.t = min(self.t_end, max(floor, self.t + delta))
        self.prev_loss = loss
        return self.t

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# --------------------------------------------------------------------------------------------------
# Label positions and teacher signals.
# --------------------------------------------------------------------------------------------------


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of positions that predict a label, and their targets.

    Position s predicts token s+1, so targets are ``labels[:, 1:]`` and the predicting positions are
    ``[:, :-1]``; returns (flat indices into the (B·T) hidden-state rows, targets), both (N,) long.
    """
    batch, length = labels.shape
    shifted = labels[:, 1:]
    rows, cols = (shifted != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows * length + cols, shifted[rows, cols]


@dataclass
class TopKSignal:
    """A cached teacher distribution: top-k log-probs (N, k) and their token ids (N, k).

    Approximation: the mass outside the top k, m = 1 − Σ exp(top-k log-probs), is spread uniformly over
    the other V − k tokens. KL terms are then exact for that distribution; the error against the full
    teacher is the KL between the full and the bucketed distribution (measured in benchmarks/).
    """

    logprobs: torch.Tensor
    indices: torch.Tensor

    def dense_logprobs(self, rows: slice, vocab_size: int) -> torch.Tensor:
        lp = self.logprobs[rows].float()
        idx = self.indices[rows].long()
        k = lp.shape[-1]
        tail = (1.0 - lp.exp().sum(-1)).clamp_min(1e-12)  # (n,)
        fill = torch.log(tail / max(vocab_size - k, 1))
        out = fill.unsqueeze(-1).expand(lp.shape[0], vocab_size).clone()
        out.scatter_(1, idx, lp)
        return out


def topk_signal(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopKSignal:
    """Compress teacher logits (N, V) into a `TopKSignal` at the given temperature."""
    lp = _log_probs(teacher_logits, temperature)
    values, indices = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return TopKSignal(values, indices.to(torch.int32))


# --------------------------------------------------------------------------------------------------
# The compound loss: plain reference path and chunked path.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """How the compound loss mixes terms.

    divergence (`str`): forward_kl, reverse_kl or taid.  temperature (`float`): softmax temperature.
    alpha (`float`): weight of the distillation term when no per-token weights are given.
    chunk_size (`int`): label positions per chunk in the chunked path.
    """

    divergence: str = "forward_kl"
    temperature: float = 1.0
    alpha: float = 0.5
    chunk_size: int = 1024

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"LossSpec.divergence: expected one of {DIVERGENCES}, got {self.divergence!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"LossSpec.alpha: expected a number in [0, 1], got {self.alpha!r}")
        if self.temperature <= 0 or self.chunk_size < 1:
            raise ValueError("LossSpec: temperature must be > 0 and chunk_size >= 1")


def _token_weights(weights, n: int, alpha: float, device) -> torch.Tensor:
    if weights is None:
        return torch.full((n,), float(alpha), device=device)
    weights = torch.as_tensor(weights, device=device)
    weights = weights.to(torch.promote_types(weights.dtype, torch.float32))
    if weights.shape != (n,):
        raise ValueError(f"token weights: expected shape ({n},), got {tuple(weights.shape)}")
    return weights


def _parts(distill_sum, ce_sum, weight_sum, count) -> dict[str, torch.Tensor]:
    return {"distill_sum": distill_sum.detach(), "ce_sum": ce_sum.detach(),
            "weight_sum": weight_sum.detach(), "tokens": count}


def compound_loss_from_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                              targets: torch.Tensor, spec: LossSpec, weights=None, taid_t: float = 1.0,
                              num_items: int | torch.Tensor | None = None):
    """Reference path on materialised logits at label positions.

    Args:
        student_logits: (N, V). teacher_logits: (N, V) (logits or log-probs), or None for plain CE.
        targets: (N,) next-token ids. weights: (N,) per-token distillation weight, or None for `spec.alpha`.
        num_items: normaliser (label tokens of the accumulated batch); defaults to N.
    Returns: (loss scalar, parts dict of detached sums for logging).
    """
    n = targets.shape[0]
    device = student_logits.device
    w = _token_weights(weights, n, spec.alpha, device)
    ce = F.cross_entropy(_upcast(student_logits), targets, reduction="none")
    if teacher_logits is None:
        div = torch.zeros_like(ce)
    else:
        div = token_divergence(spec.divergence, student_logits, teacher_logits, spec.temperature, taid_t)
    total = (w * div + (1 - w) * ce).sum()
    denom = num_items if num_items is not None else n
    denom = torch.as_tensor(denom, dtype=total.dtype, device=device).clamp_min(1)
    return total / denom, _parts(div.sum(), ce.sum(), w.sum(), n)


class _ChunkedCompoundLoss(torch.autograd.Function):
    """Forward computes loss and gradients chunk by chunk; backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, student_hidden, student_weight, teacher_hidden, teacher_weight, teacher_signal, targets,
                token_weights, spec: LossSpec, taid_t: float, denom):
        n = targets.shape[0]
        vocab = student_weight.shape[0]
        acc = torch.promote_types(student_hidden.dtype, torch.float32)  # accumulate in >= fp32
        grad_hidden = torch.zeros_like(student_hidden, dtype=acc)
        grad_weight = torch.zeros_like(student_weight, dtype=acc)
        total = torch.zeros((), dtype=acc, device=student_hidden.device)
        distill_sum = torch.zeros_like(total)
        ce_sum = torch.zeros_like(total)
        weight_leaf = student_weight.detach().requires_grad_(True)
        for start in range(0, n, spec.chunk_size):
            rows = slice(start, min(start + spec.chunk_size, n))
            with torch.no_grad():
                if teacher_signal is not None:
                    teacher_logits = teacher_signal.dense_logprobs(rows, vocab).to(student_hidden.device)
                elif teacher_hidden is not None:
                    teacher_logits = teacher_hidden[rows] @ teacher_weight.t()  # (c, V)
                else:
                    teacher_logits = None
            with torch.enable_grad():
                h = student_hidden[rows].detach().requires_grad_(True)
                logits = h @ weight_leaf.t()  # (c, V)
                w = token_weights[rows]
                ce = F.cross_entropy(_upcast(logits), targets[rows], reduction="none")
                if teacher_logits is None:
                    div = torch.zeros_like(ce)
                else:
                    div = token_divergence(spec.divergence, logits, teacher_logits, spec.temperature, taid_t)
                chunk_loss = (w * div + (1 - w) * ce).sum()
                g_h, g_w = torch.autograd.grad(chunk_loss, (h, weight_leaf))
            grad_hidden[rows] = g_h.to(acc)
            grad_weight += g_w.to(acc)
            total += chunk_loss.detach()
            distill_sum += div.detach().sum()
            ce_sum += ce.detach().sum()
        ctx.save_for_backward(grad_hidden / denom, grad_weight / denom)
        ctx.dtypes = (student_hidden.dtype, student_weight.dtype)
        ctx.mark_non_differentiable(distill_sum, ce_sum)
        return total / denom, distill_sum, ce_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_distill, _grad_ce):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return ((grad_hidden * grad_loss).to(hidden_dtype), (grad_weight * grad_loss).to(weight_dtype),
                None, None, None, None, None, None, None, None)


def chunked_compound_loss(student_hidden: torch.Tensor, student_lm_head: torch.Tensor, targets: torch.Tensor,
                          spec: LossSpec, teacher_hidden: torch.Tensor | None = None,
                          teacher_lm_head: torch.Tensor | None = None, teacher_signal: TopKSignal | None = None,
                          weights=None, taid_t: float = 1.0, num_items: int | torch.Tensor | None = None):
    """The compound loss without materialising (N, V) logits.

    Args:
        student_hidden: (N, H) final hidden states at label positions (after the final norm), with grad.
        student_lm_head: (V, H) lm_head weight (gets a gradient; no bias: Llama has none).
        targets: (N,) next-token ids.
        teacher_hidden / teacher_lm_head: (N, H_t), (V, H_t) for an online teacher; or
        teacher_signal: a cached `TopKSignal`; or neither for plain CE.
        weights: (N,) per-token distillation weights (AW), or None for `spec.alpha`.
        num_items: normaliser (label tokens of the accumulated batch); defaults to N.
    Returns: (loss scalar, parts dict of detached sums). Values and gradients equal
    `compound_loss_from_logits` on the full logits.
    """
    n = targets.shape[0]
    device = student_hidden.device
    w = _token_weights(weights, n, spec.alpha, device)
    denom = num_items if num_items is not None else n
    denom = torch.as_tensor(denom, dtype=_upcast(student_hidden[:0]).dtype, device=device).clamp_min(1)
    if n == 0:  # an all-ignored micro-batch: zero loss that still connects to the graph (DDP needs it)
        zero = (student_hidden.sum() + student_lm_head.sum()) * 0.0
        return zero, _parts(zero, zero, zero, 0)
    loss, distill_sum, ce_sum = _ChunkedCompoundLoss.apply(
        student_hidden, student_lm_head, teacher_hidden, teacher_lm_head, teacher_signal, targets, w, spec,
        float(taid_t), denom,
    )
    return loss, _parts(distill_sum, ce_sum, w.sum(), n)
