"""The compound loss: the plain autograd path on logits, and the chunked path on hidden states.

Per label token the compound loss is ``w·D(p‖q) + (1−w)·CE`` (paper eq. for TD/CD/SCD; AW sets ``w`` per
sample), summed over label tokens and divided by ``num_items`` — the label-token count of the whole
accumulated (and, where enabled, all-process) batch — so gradient accumulation does not change results.

Vocabularies are large (Llama 3: 128,256): full fp32 logits for 4,096 tokens are 2.1 GB per model, and an
autograd graph over them keeps several such tensors. The chunked path takes the *hidden states* at label
positions and the lm_head weights, and computes logits, loss and the closed-form gradients one chunk of
positions at a time inside a custom autograd function (the approach of Liger-Kernel's fused linear
losses), so peak memory is O(chunk_size·V), not O(N·V). `compound_loss_from_logits` is the plain autograd
path on materialised logits: the reference the chunked path is tested against, and fine for small models.
CE always uses T = 1; the divergence uses `spec.temperature` (see `divergences`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillkit_scd.losses.chunk_kernel import Workspace, tiled_chunk_terms
from distillkit_scd.losses.compiled_kernel import compiled_chunk_terms
from distillkit_scd.losses.divergences import DIVERGENCES, _acc_dtype, _check_t, _upcast, token_divergence
from distillkit_scd.losses.teacher_signal import TopKSignal


@dataclass(frozen=True)
class LossSpec:
    """How the compound loss mixes terms.

    divergence (`str`, defaults to `forward_kl`): forward_kl, reverse_kl or taid.
    temperature (`float`, defaults to 1.0): softmax temperature of the divergence (T² scaled); CE uses 1.
    alpha (`float`, defaults to 0.5): weight of the distillation term when no per-token weights are given.
    chunk_size (`int`, defaults to 1024): label positions per chunk; peak extra memory ≈ 3–4·chunk_size·V floats
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
        if not self.temperature > 0:
            raise ValueError(f"LossSpec.temperature: expected a number > 0, got {self.temperature!r}")
        if not (isinstance(self.chunk_size, int) and self.chunk_size >= 1):
            raise ValueError(f"LossSpec.chunk_size: expected an integer >= 1, got {self.chunk_size!r}")


def _token_weights(weights, n: int, alpha: float, device) -> torch.Tensor:
    if weights is None:
        return torch.full((n,), float(alpha), device=device)
    weights = torch.as_tensor(weights, device=device)
    weights = weights.to(_acc_dtype(weights.dtype))
    if weights.shape != (n,):
        raise ValueError(f"weights: expected one distillation weight per label token, shape ({n},), "
                         f"got {tuple(weights.shape)}")
    return weights


def _denominator(num_items, n: int, dtype, device) -> torch.Tensor:
    """num_items (int or 0-d tensor, possibly on GPU: no sync) or n; at least 1 so 0 tokens give 0."""
    denom = num_items if num_items is not None else n
    return torch.as_tensor(denom, device=device).to(dtype).clamp_min(1)


def _parts(distill_sum, ce_sum, weight_sum, count: int) -> dict:
    """Detached sums for logging; no `.item()` here (that would sync the GPU every micro-batch)."""
    return {"distill_sum": distill_sum.detach(), "ce_sum": ce_sum.detach(), "weight_sum": weight_sum.detach(),
            "weight_mean": weight_sum.detach() / max(count, 1), "tokens": count}


def compound_loss_from_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                              targets: torch.Tensor, spec: LossSpec, weights=None, taid_t: float = 1.0,
                              num_items: int | torch.Tensor | None = None):
    """Reference path on materialised logits at label positions (plain autograd).

    Args:
        student_logits: (N, V). teacher_logits: (N, V) logits or log-probs, or None for plain CE.
        targets: (N,) next-token ids. weights: (N,) per-token distillation weight, or None for `spec.alpha`.
        taid_t: TAID's t (used when spec.divergence == "taid").
        num_items: normaliser (label tokens of the accumulated batch); defaults to N.
    Returns: (loss scalar, parts dict of detached sums: distill_sum, ce_sum, weight_sum, weight_mean, tokens).
    """
    n = targets.shape[0]
    device = student_logits.device
    w = _token_weights(weights, n, spec.alpha, device)
    ce = F.cross_entropy(_upcast(student_logits), targets, reduction="none")  # (N,)
    if teacher_logits is None:
        div = torch.zeros_like(ce)
    else:
        div = token_divergence(spec.divergence, student_logits, teacher_logits, spec.temperature, taid_t)
    total = (w * div + (1 - w) * ce).sum()
    return total / _denominator(num_items, n, total.dtype, device), _parts(div.sum(), ce.sum(), w.sum(), n)


def _logits_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """hidden @ weightᵀ (+ bias) written into `out` (accumulation dtype; bf16 products are computed in bf16)."""
    if weight.dtype == out.dtype and hidden.dtype == out.dtype:
        if bias is None:
            return torch.mm(hidden, weight.t(), out=out)
        return torch.addmm(bias.to(out.dtype), hidden, weight.t(), out=out)
    return out.copy_(F.linear(hidden, weight, bias))


class _ChunkedCompoundLoss(torch.autograd.Function):
    """Forward computes loss and gradients chunk by chunk; backward only scales the stored gradients.

    Gradient accumulators have the parameters' dtypes (as Liger-Kernel): exact for float32/64 models.
    Backward scales them in place, so it can run once (no `retain_graph` re-use).
    """

    @staticmethod
    def forward(ctx, student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias,
                teacher_signal, targets, token_weights, spec: LossSpec, taid_t: float, denom, needs, workspace,
                compiled):
        need_h, need_w, need_b = needs
        need_grad = need_h or need_w or need_b
        n, vocab = targets.shape[0], student_weight.shape[0]
        acc = _acc_dtype(student_hidden.dtype)
        grad_hidden = torch.zeros_like(student_hidden) if need_h else None  # (N, H)
        grad_weight = torch.zeros_like(student_weight) if need_w else None  # (V, H)
        grad_bias = torch.zeros_like(student_bias) if need_b else None  # (V,)
        total = torch.zeros((), dtype=acc, device=student_hidden.device)
        distill_sum, ce_sum = torch.zeros_like(total), torch.zeros_like(total)
        ws = workspace if workspace is not None else Workspace()
        kernel = compiled_chunk_terms if compiled else tiled_chunk_terms
        for start in range(0, n, spec.chunk_size):
            rows = slice(start, min(start + spec.chunk_size, n))
            h = student_hidden[rows]  # (c, H)
            c = h.shape[0]
            z = _logits_into(ws.take("z", c, vocab, acc, h.device), h, student_weight, student_bias)  # (c, V)
            teacher = None
            if teacher_signal is not None:
                teacher = teacher_signal.dense_logprobs(rows, vocab, out=ws.take("t", c, vocab, acc, h.device))
            elif teacher_hidden is not None:
                teacher = _logits_into(ws.take("t", c, vocab, acc, h.device), teacher_hidden[rows], teacher_weight,
                                       teacher_bias)
            w = token_weights[rows].to(acc)
            div, ce, grad_z = kernel(z, teacher, targets[rows], w, spec.divergence, spec.temperature, taid_t,
                                          need_grad, ws.take("s", c, vocab, acc, h.device))
            total += (w * div + (1 - w) * ce).sum()
            distill_sum += div.sum()
            ce_sum += ce.sum()
            if grad_z is not None:
                grad_z = grad_z.to(student_weight.dtype)  # (c, V)
                if need_h:
                    grad_hidden[rows] = grad_z @ student_weight  # (c, H)
                if need_w:
                    grad_weight.addmm_(grad_z.t(), h)
                if need_b:
                    grad_bias.add_(grad_z.sum(0))
            del z, teacher, grad_z
        scale = 1.0 / denom
        saved = []
        for g in (grad_hidden, grad_weight, grad_bias):
            saved.append(g.mul_(scale.to(g.dtype)) if g is not None else None)
        ctx.grads = saved
        ctx.mark_non_differentiable(distill_sum, ce_sum)
        return total / denom, distill_sum, ce_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_distill, _grad_ce):
        if ctx.grads is None:
            raise RuntimeError("chunked_compound_loss: backward ran twice (retain_graph is not supported)")
        out = [g.mul_(grad_loss.to(g.dtype)) if g is not None else None for g in ctx.grads]
        ctx.grads = None
        return (out[0], out[1], out[2]) + (None,) * 12


def chunked_compound_loss(student_hidden: torch.Tensor, student_lm_head: torch.Tensor, targets: torch.Tensor,
                          spec: LossSpec, teacher_hidden: torch.Tensor | None = None,
                          teacher_lm_head: torch.Tensor | None = None, teacher_signal: TopKSignal | None = None,
                          weights=None, taid_t: float = 1.0, num_items: int | torch.Tensor | None = None,
                          student_bias: torch.Tensor | None = None, teacher_bias: torch.Tensor | None = None,
                          workspace: Workspace | None = None, compiled: bool = False):
    """The compound loss without materialising (N, V) logits.

    Args:
        student_hidden: (N, H) final hidden states at label positions (after the final norm), with grad.
        student_lm_head: (V, H) lm_head weight (gets a gradient when it requires one).
        targets: (N,) next-token ids (`label_positions`).
        teacher_hidden / teacher_lm_head: (N, H_t), (V, H_t) for an online teacher; or
        teacher_signal: a cached `TopKSignal` (N rows); or neither for plain CE.
        weights: (N,) per-token distillation weights (AW, `per_token_weights`), or None for `spec.alpha`.
        taid_t: TAID's t (used when spec.divergence == "taid").
        num_items: normaliser (label tokens of the accumulated batch); defaults to N.
        student_bias / teacher_bias: (V,) optional lm_head biases.
        workspace: a `chunk_kernel.Workspace` to keep the three (chunk, V) buffers in between calls (the
        trainer passes one on CPU, where fresh 64 MB+ buffers cost page faults); None: buffers for this call.
        compiled: run the chunk's element-wise work through `compiled_kernel` (torch.compile; eager fallback).
    Returns: (loss scalar, parts dict of detached sums, as `compound_loss_from_logits`). Values and
    gradients equal `compound_loss_from_logits` on the full logits. N = 0 gives a zero loss still
    connected to the graph (DDP expects every parameter to get a gradient), with zero gradients.
    Raises: ValueError on inconsistent shapes or teacher arguments.
    """
    n = targets.shape[0]
    _check_chunked_args(student_hidden, student_lm_head, targets, teacher_hidden, teacher_lm_head, teacher_signal,
                        student_bias, spec, taid_t)
    device = student_hidden.device
    w = _token_weights(weights, n, spec.alpha, device)
    if n == 0:  # an all-ignored micro-batch
        zero = (student_hidden.sum() + student_lm_head.sum()) * 0.0
        if student_bias is not None:
            zero = zero + student_bias.sum() * 0.0
        return zero, _parts(zero, zero, zero, 0)
    denom = _denominator(num_items, n, _acc_dtype(student_hidden.dtype), device)
    grad_on = torch.is_grad_enabled()
    needs = (grad_on and student_hidden.requires_grad, grad_on and student_lm_head.requires_grad,
             grad_on and student_bias is not None and student_bias.requires_grad)
    loss, distill_sum, ce_sum = _ChunkedCompoundLoss.apply(
        student_hidden, student_lm_head, student_bias, teacher_hidden, teacher_lm_head, teacher_bias,
        teacher_signal, targets, w, spec, float(taid_t), denom, needs, workspace, compiled,
    )
    return loss, _parts(distill_sum, ce_sum, w.sum(), n)


def _check_chunked_args(student_hidden, student_lm_head, targets, teacher_hidden, teacher_lm_head, teacher_signal,
                        student_bias, spec, taid_t) -> None:
    n = targets.shape[0]
    if student_hidden.dim() != 2 or student_hidden.shape[0] != n:
        raise ValueError(f"student_hidden: expected shape (N={n}, H), got {tuple(student_hidden.shape)}")
    if student_lm_head.dim() != 2 or student_lm_head.shape[1] != student_hidden.shape[1]:
        raise ValueError(f"student_lm_head: expected shape (V, H={student_hidden.shape[1]}), "
                         f"got {tuple(student_lm_head.shape)}")
    vocab = student_lm_head.shape[0]
    if student_bias is not None and student_bias.shape != (vocab,):
        raise ValueError(f"student_bias: expected shape ({vocab},), got {tuple(student_bias.shape)}")
    if (teacher_hidden is None) != (teacher_lm_head is None):
        raise ValueError("teacher_hidden and teacher_lm_head: pass both (online teacher) or neither")
    if teacher_hidden is not None and teacher_signal is not None:
        raise ValueError("teacher: pass teacher_hidden/teacher_lm_head or teacher_signal, not both")
    if teacher_hidden is not None:
        if teacher_hidden.shape[0] != n or teacher_lm_head.shape != (vocab, teacher_hidden.shape[-1]):
            raise ValueError(f"teacher_hidden/teacher_lm_head: expected (N={n}, H_t) and (V={vocab}, H_t), got "
                             f"{tuple(teacher_hidden.shape)} and {tuple(teacher_lm_head.shape)}")
    if teacher_signal is not None and teacher_signal.logprobs.shape[0] != n:
        raise ValueError(f"teacher_signal: expected {n} rows, got {teacher_signal.logprobs.shape[0]}")
    if spec.divergence == "taid":
        _check_t(taid_t)

