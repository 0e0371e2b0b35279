"""Every loss against an independent float64 reference written as plain loops, plus invariants.

References: `ref_*` are plain-Python loops over positions and the vocabulary (values); `torch_reference`
is a float64 autograd formula written out here from the definitions (gradients). Neither calls the
library, so a shared mistake cannot pass.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from distillkit_scd.losses import (
    LossSpec,
    TopKSignal,
    adaptive_weight,
    chunked_compound_loss,
    compound_loss_from_logits,
    label_positions,
    per_token_weights,
    taid_target,
    token_divergence,
    token_kl,
    token_reverse_kl,
    token_taid_kl,
    topk_signal,
)

KINDS = ["forward_kl", "reverse_kl", "taid"]


# ------------------------------------------------------------------ references (no library code)


def _softmax_row(z, temp=1.0):
    m = max(v / temp for v in z)
    e = [math.exp(v / temp - m) for v in z]
    s = sum(e)
    return [x / s for x in e]


def ref_divergence(kind, zs, zt, temp=1.0, t=1.0):
    """Plain-Python divergence for one position (lists of floats), times T²."""
    q = _softmax_row(zs, temp)
    if kind == "taid":
        p = _softmax_row([((1 - t) * a + t * b) / temp for a, b in zip(zs, zt)])
    else:
        p = _softmax_row(zt, temp)
    if kind == "reverse_kl":
        p, q = q, p
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)) * temp**2


def ref_ce(zs, target):
    m = max(zs)
    return -(zs[target] - m - math.log(sum(math.exp(v - m) for v in zs)))


def ref_compound(zs_rows, zt_rows, targets, weights, kind, temp, t, denom):
    total = 0.0
    for zs, zt, y, w in zip(zs_rows, zt_rows, targets, weights):
        total += w * ref_divergence(kind, zs, zt, temp, t) + (1 - w) * ref_ce(zs, y)
    return total / denom


def torch_reference(logits, t_logits, targets, weights, kind, temp, t, denom):
    """Float64 autograd formula from the definitions (for gradients)."""
    log_q = torch.log_softmax(logits / temp, -1)
    if kind == "taid":
        log_p = torch.log_softmax(((1 - t) * logits.detach() + t * t_logits) / temp, -1)
    else:
        log_p = torch.log_softmax(t_logits / temp, -1)
    if kind == "reverse_kl":
        div = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        div = (log_p.exp() * (log_p - log_q)).sum(-1)
    ce = -torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    return (weights * div * temp**2 + (1 - weights) * ce).sum() / denom


def assert_close_named(got, want, rtol, atol, what):
    """assert_close whose message names the worst index."""
    got, want = got.double(), want.double()
    err = (got - want).abs() - atol - rtol * want.abs()
    if bool((err > 0).any()):
        i = tuple(int(v) for v in torch.nonzero(err == err.max())[0])
        pytest.fail(f"{what}: mismatch at index {i}: got {got[i].item():.10g}, want {want[i].item():.10g}")


def _batch(seed=0, b=3, t=17, h=31, v=123, th=19, dtype=torch.float64):
    """Odd shapes; prompt tokens masked at the start of every row, padding at the end of row 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :5] = -100  # prompt
    if b > 1:
        labels[1, 12:] = -100  # padding
    if b > 2:
        labels[2, :9] = -100
    return {
        "hs": torch.randn(b * t, h, generator=g, dtype=dtype),
        "ws": torch.randn(v, h, generator=g, dtype=dtype) * 0.3,
        "ht": torch.randn(b * t, th, generator=g, dtype=dtype),
        "wt": torch.randn(v, th, generator=g, dtype=dtype) * 0.3,
        "labels": labels,
    }


# ------------------------------------------------------------------ per-position divergences


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_token_divergence_matches_loop_reference(kind, temp):
    """Per-position divergences equal a float64 loop over positions and vocabulary."""
    torch.manual_seed(0)
    zs, zt = torch.randn(5, 23) * 3, torch.randn(5, 23) * 3
    got = token_divergence(kind, zs, zt, temp, taid_t=0.3)
    want = [ref_divergence(kind, a.tolist(), b.tolist(), temp, 0.3) for a, b in zip(zs.double(), zt.double())]
    assert got.dtype == torch.float32 and got.shape == (5,)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-5)


def test_token_kl_matches_torch_kl_div_and_keeps_leading_shape():
    """Forward/reverse KL agree with F.kl_div(log_target=True) summed over V; (B, T, V) → (B, T)."""
    torch.manual_seed(1)
    zs, zt = torch.randn(2, 7, 31), torch.randn(2, 7, 31)
    want = F.kl_div(F.log_softmax(zs, -1), F.log_softmax(zt, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_kl(zs, zt), want)
    rev = F.kl_div(F.log_softmax(zt, -1), F.log_softmax(zs, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_reverse_kl(zs, zt), rev)


def test_temperature_scaling_is_t_squared_and_gradient_is_t_times_q_minus_p():
    """token_kl at T = T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)); its logit gradient is T·(q_T − p_T)."""
    torch.manual_seed(2)
    zs = torch.randn(4, 19, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, 19, dtype=torch.float64)
    temp = 3.0
    kl = token_kl(zs, zt, temp)
    plain = F.kl_div(F.log_softmax(zs / temp, -1), F.log_softmax(zt / temp, -1), log_target=True,
                     reduction="none").sum(-1)
    torch.testing.assert_close(kl, plain * temp**2)
    kl.sum().backward()
    expected = temp * (torch.softmax(zs.detach() / temp, -1) - torch.softmax(zt / temp, -1))
    torch.testing.assert_close(zs.grad, expected)


def test_bf16_logits_are_computed_in_float32():
    """bf16 inputs give float32 results close to the float32 computation on the same (rounded) values."""
    torch.manual_seed(3)
    zs, zt = (torch.randn(6, 40) * 4).bfloat16(), (torch.randn(6, 40) * 4).bfloat16()
    for kind in KINDS:
        got = token_divergence(kind, zs, zt, 1.0, 0.5)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, token_divergence(kind, zs.float(), zt.float(), 1.0, 0.5))


def test_teacher_side_gets_no_gradient():
    """The teacher is a constant: no gradient reaches its logits for any kind."""
    zs = torch.randn(3, 9, requires_grad=True)
    zt = torch.randn(3, 9, requires_grad=True)
    for kind in KINDS:
        token_divergence(kind, zs, zt, 1.5, 0.4).sum().backward()
    assert zt.grad is None and zs.grad is not None


def test_divergences_zero_when_student_equals_teacher():
    """KL of a distribution to itself is 0 for every kind, temperature and t."""
    z = torch.randn(4, 17)
    for kind in KINDS:
        torch.testing.assert_close(token_divergence(kind, z, z.clone(), 1.5, 0.6), torch.zeros(4), atol=1e-5,
                                   rtol=0)


def test_taid_target_endpoints_and_midpoint():
    """p_t is the teacher at t=1, the (detached) student at t=0, and the logit mix in between."""
    zs, zt = torch.randn(3, 11, requires_grad=True), torch.randn(3, 11)
    torch.testing.assert_close(taid_target(zs, zt, 1.0), F.log_softmax(zt, -1))
    torch.testing.assert_close(taid_target(zs, zt, 0.0), F.log_softmax(zs.detach(), -1))
    mid = taid_target(zs, zt, 0.25)
    assert not mid.requires_grad
    row = _softmax_row([0.75 * a + 0.25 * b for a, b in zip(zs[0].tolist(), zt[0].tolist())])
    torch.testing.assert_close(mid[0].exp().double(), torch.tensor(row, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="t"):
        taid_target(zs, zt, 1.5)


def test_taid_loss_is_kl_from_p_t():
    """token_taid_kl = KL(p_t ‖ q) with p_t from taid_target (F.kl_div cross-check)."""
    zs, zt = torch.randn(5, 13), torch.randn(5, 13)
    want = F.kl_div(F.log_softmax(zs, -1), taid_target(zs, zt, 0.7), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_taid_kl(zs, zt, 0.7), want)


# ------------------------------------------------------------------ compound loss: chunked and reference


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_equals_loop_reference_values_and_grads(kind, chunk):
    """Chunked loss on hidden states == float64 loop reference (value) and autograd formula (gradients),
    with per-token weights, temperature, a normaliser larger than N, and chunk sizes that do not divide N."""
    d = _batch()
    idx, targets = label_positions(d["labels"])
    n = targets.numel()
    weights = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    spec = LossSpec(divergence=kind, temperature=1.3, chunk_size=chunk)

    hs = d["hs"].clone().requires_grad_(True)
    ws = d["ws"].clone().requires_grad_(True)
    loss, parts = chunked_compound_loss(hs[idx], ws, targets, spec, d["ht"][idx], d["wt"], weights=weights,
                                        taid_t=0.55, num_items=n + 3)
    loss.backward()

    zs_rows = (d["hs"][idx] @ d["ws"].t()).tolist()
    zt_rows = (d["ht"][idx] @ d["wt"].t()).tolist()
    want = ref_compound(zs_rows, zt_rows, targets.tolist(), weights.tolist(), kind, 1.3, 0.55, n + 3)
    assert loss.item() == pytest.approx(want, rel=1e-9)

    hs2 = d["hs"].clone().requires_grad_(True)
    ws2 = d["ws"].clone().requires_grad_(True)
    ref = torch_reference(hs2[idx] @ ws2.t(), d["ht"][idx] @ d["wt"].t(), targets, weights, kind, 1.3, 0.55, n + 3)
    ref.backward()
    assert_close_named(hs.grad, hs2.grad, 1e-9, 1e-12, "student hidden grad")
    assert_close_named(ws.grad, ws2.grad, 1e-9, 1e-12, "lm_head grad")
    assert parts["tokens"] == n
    assert parts["weight_mean"].item() == pytest.approx(weights.mean().item())
    want_div = sum(ref_divergence(kind, a, b, 1.3, 0.55) for a, b in zip(zs_rows, zt_rows))
    assert parts["distill_sum"].item() == pytest.approx(want_div, rel=1e-9)
    assert parts["ce_sum"].item() == pytest.approx(sum(ref_ce(a, y) for a, y in zip(zs_rows, targets.tolist())))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [3, 10, 33])
def test_chunked_equals_unchunked_reference_path(kind, chunk):
    """`chunked_compound_loss` == `compound_loss_from_logits` on materialised logits: loss, parts, grads."""
    d = _batch(seed=5)
    idx, targets = label_positions(d["labels"])
    spec = LossSpec(divergence=kind, temperature=0.7, chunk_size=chunk)
    hs = d["hs"][idx].clone().requires_grad_(True)
    ws = d["ws"].clone().requires_grad_(True)
    loss_c, parts_c = chunked_compound_loss(hs, ws, targets, spec, d["ht"][idx], d["wt"], taid_t=0.4)
    loss_c.backward()
    hs2, ws2 = d["hs"][idx].clone().requires_grad_(True), d["ws"].clone().requires_grad_(True)
    loss_u, parts_u = compound_loss_from_logits(hs2 @ ws2.t(), d["ht"][idx] @ d["wt"].t(), targets, spec, taid_t=0.4)
    loss_u.backward()
    torch.testing.assert_close(loss_c, loss_u, rtol=1e-10, atol=1e-12)
    for key in ("distill_sum", "ce_sum", "weight_sum", "weight_mean"):
        torch.testing.assert_close(parts_c[key].double(), parts_u[key].double(), rtol=1e-10, atol=1e-12)
    assert parts_c["tokens"] == parts_u["tokens"] == targets.numel()
    torch.testing.assert_close(hs.grad, hs2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ws.grad, ws2.grad, rtol=1e-9, atol=1e-12)


def test_lm_head_biases_match_reference():
    """Optional lm_head biases: loss and gradients (hidden, weight, bias) equal the logits path."""
    d = _batch(seed=6)
    idx, targets = label_positions(d["labels"])
    g = torch.Generator().manual_seed(0)
    bs = torch.randn(123, dtype=torch.float64, generator=g).requires_grad_(True)
    bt = torch.randn(123, dtype=torch.float64, generator=g)
    spec = LossSpec(chunk_size=6)
    ws = d["ws"].clone().requires_grad_(True)
    loss, _ = chunked_compound_loss(d["hs"][idx], ws, targets, spec, d["ht"][idx], d["wt"], student_bias=bs,
                                    teacher_bias=bt)
    loss.backward()
    bs2, ws2 = bs.detach().clone().requires_grad_(True), d["ws"].clone().requires_grad_(True)
    ref, _ = compound_loss_from_logits(d["hs"][idx] @ ws2.t() + bs2, d["ht"][idx] @ d["wt"].t() + bt, targets, spec)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(bs.grad, bs2.grad)
    torch.testing.assert_close(ws.grad, ws2.grad)


def test_float32_and_bf16_inputs():
    """float32 matches float64 closely; bf16 runs, returns float32 and stays near the float64 value."""
    d = _batch(seed=8)
    idx, targets = label_positions(d["labels"])
    spec = LossSpec(chunk_size=16)
    want, _ = chunked_compound_loss(d["hs"][idx], d["ws"], targets, spec, d["ht"][idx], d["wt"])
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        hs = d["hs"][idx].to(dtype).requires_grad_(True)
        ws = d["ws"].to(dtype).requires_grad_(True)
        got, _ = chunked_compound_loss(hs, ws, targets, spec, d["ht"][idx].to(dtype), d["wt"].to(dtype))
        got.backward()
        assert got.dtype == torch.float32 and hs.grad.dtype == dtype and ws.grad.dtype == dtype
        assert got.item() == pytest.approx(want.item(), rel=tol)


def test_no_grad_mode_gives_the_same_loss_and_builds_no_graph():
    """Under torch.no_grad (evaluation) the loss is the same and nothing requires grad."""
    d = _batch(seed=9)
    idx, targets = label_positions(d["labels"])
    hs = d["hs"][idx].clone().requires_grad_(True)
    with_grad, _ = chunked_compound_loss(hs, d["ws"], targets, LossSpec(chunk_size=5), d["ht"][idx], d["wt"])
    with torch.no_grad():
        without, _ = chunked_compound_loss(hs, d["ws"], targets, LossSpec(chunk_size=5), d["ht"][idx], d["wt"])
    assert not without.requires_grad
    torch.testing.assert_close(with_grad.detach(), without)


def test_backward_twice_is_refused():
    """The stored gradients are scaled in place, so a second backward (retain_graph) raises."""
    d = _batch(seed=1)
    idx, targets = label_positions(d["labels"])
    hs = d["hs"][idx].clone().requires_grad_(True)
    loss, _ = chunked_compound_loss(hs, d["ws"], targets, LossSpec(), d["ht"][idx], d["wt"])
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_zero_distillation_when_student_equals_teacher():
    """Same hidden states and head for both: the distillation sum is 0 and α=1 has zero gradients."""
    d = _batch(seed=3)
    idx, targets = label_positions(d["labels"])
    for kind in KINDS:
        hs = d["hs"][idx].clone().requires_grad_(True)
        loss, parts = chunked_compound_loss(hs, d["ws"], targets, LossSpec(divergence=kind, alpha=1.0, chunk_size=9),
                                            d["hs"][idx], d["ws"], taid_t=0.5)
        loss.backward()
        assert abs(loss.item()) < 1e-12 and abs(parts["distill_sum"].item()) < 1e-10
        assert hs.grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_endpoints_reduce_to_ce_and_pure_divergence(kind):
    """α=0 is plain CE (teacher ignored), α=1 is the pure mean divergence; values and gradients."""
    d = _batch(seed=2)
    idx, targets = label_positions(d["labels"])
    zt = d["ht"][idx] @ d["wt"].t()
    for alpha in (0.0, 1.0):
        hs = d["hs"][idx].clone().requires_grad_(True)
        loss, _ = chunked_compound_loss(hs, d["ws"], targets, LossSpec(divergence=kind, alpha=alpha, chunk_size=11),
                                        d["ht"][idx], d["wt"], taid_t=0.3)
        loss.backward()
        hs2 = d["hs"][idx].clone().requires_grad_(True)
        zs = hs2 @ d["ws"].t()
        if alpha == 0.0:
            want = F.cross_entropy(zs, targets)
        else:
            want = F.kl_div(F.log_softmax(zs, -1), F.log_softmax(zt, -1), log_target=True, reduction="none")
            if kind == "reverse_kl":
                want = F.kl_div(F.log_softmax(zt, -1), F.log_softmax(zs, -1), log_target=True, reduction="none")
            if kind == "taid":
                pt = F.log_softmax(0.7 * zs.detach() + 0.3 * zt, -1)
                want = F.kl_div(F.log_softmax(zs, -1), pt, log_target=True, reduction="none")
            want = want.sum(-1).mean()
        want.backward()
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(hs.grad, hs2.grad)


def test_per_sample_aw_weights():
    """AW: every label token gets its sample's weight; the loss equals a loop over samples."""
    d = _batch(seed=11)
    idx, targets = label_positions(d["labels"])
    sample_w = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    w = per_token_weights(sample_w, idx, 17)
    rows = (idx // 17).tolist()
    assert w.tolist() == [sample_w[r].item() for r in rows]
    loss, parts = chunked_compound_loss(d["hs"][idx], d["ws"], targets, LossSpec(chunk_size=4), d["ht"][idx],
                                        d["wt"], weights=w)
    zs_rows = (d["hs"][idx] @ d["ws"].t()).tolist()
    zt_rows = (d["ht"][idx] @ d["wt"].t()).tolist()
    total = 0.0
    for b in range(3):
        for zs, zt, y, r in zip(zs_rows, zt_rows, targets.tolist(), rows):
            if r == b:
                aw = sample_w[b].item()
                total += aw * ref_divergence("forward_kl", zs, zt) + (1 - aw) * ref_ce(zs, y)
    assert loss.item() == pytest.approx(total / len(rows), rel=1e-10)
    assert parts["weight_mean"].item() == pytest.approx(sum(sample_w[r].item() for r in rows) / len(rows))


def test_all_ignored_batch_gives_zero_not_nan():
    """A micro-batch with no label tokens contributes 0 loss and 0 gradients, for any num_items."""
    labels = torch.full((2, 6), -100)
    idx, targets = label_positions(labels)
    for num_items in (0, 5, None):
        hs = torch.randn(12, 8, requires_grad=True)
        ws = torch.randn(13, 8, requires_grad=True)
        loss, parts = chunked_compound_loss(hs[idx], ws, targets, LossSpec(), torch.randn(12, 4)[idx],
                                            torch.randn(13, 4), num_items=num_items)
        loss.backward()
        assert loss.item() == 0.0 and not torch.isnan(loss) and parts["tokens"] == 0
        assert torch.count_nonzero(hs.grad) == 0 and torch.count_nonzero(ws.grad) == 0
        ref, _ = compound_loss_from_logits(torch.randn(0, 13), torch.randn(0, 13), targets, LossSpec(),
                                           num_items=num_items)
        assert ref.item() == 0.0


def test_gradient_accumulation_invariance():
    """4 micro-batches normalised by the total token count sum to the 1-batch loss and gradients."""
    d = _batch(seed=7, b=4)
    idx, targets = label_positions(d["labels"])
    total_tokens = targets.numel()
    spec = LossSpec(divergence="taid", chunk_size=8)
    hs_full = d["hs"].clone().requires_grad_(True)
    ws_full = d["ws"].clone().requires_grad_(True)
    full, _ = chunked_compound_loss(hs_full[idx], ws_full, targets, spec, d["ht"][idx], d["wt"], taid_t=0.6)
    full.backward()

    hs_acc = d["hs"].clone().requires_grad_(True)
    ws_acc = d["ws"].clone().requires_grad_(True)
    summed = 0.0
    t = d["labels"].shape[1]
    for b in range(4):
        i, y = label_positions(d["labels"][b : b + 1])
        hs = hs_acc[b * t : (b + 1) * t]
        ht = d["ht"][b * t : (b + 1) * t]
        loss, _ = chunked_compound_loss(hs[i], ws_acc, y, spec, ht[i], d["wt"], taid_t=0.6,
                                        num_items=torch.tensor(total_tokens))
        loss.backward()
        summed += loss.item()
    assert summed == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(ws_acc.grad, ws_full.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(hs_acc.grad, hs_full.grad, rtol=1e-10, atol=1e-13)


def test_padding_changes_nothing():
    """Adding padded (ignored) positions leaves the loss unchanged."""
    d = _batch(seed=4)
    idx, targets = label_positions(d["labels"])
    base, _ = chunked_compound_loss(d["hs"][idx], d["ws"], targets, LossSpec(), d["ht"][idx], d["wt"])
    padded = torch.cat([d["labels"], torch.full((3, 5), -100)], dim=1)
    hs = torch.cat([d["hs"].view(3, 17, -1), torch.randn(3, 5, 31, dtype=torch.float64)], 1).reshape(-1, 31)
    ht = torch.cat([d["ht"].view(3, 17, -1), torch.randn(3, 5, 19, dtype=torch.float64)], 1).reshape(-1, 19)
    idx2, targets2 = label_positions(padded)
    again, _ = chunked_compound_loss(hs[idx2], d["ws"], targets2, LossSpec(), ht[idx2], d["wt"])
    torch.testing.assert_close(base, again)


def test_plain_ce_without_teacher():
    """No teacher: the chunked loss is mean CE whatever α is, and the distillation sum is 0."""
    d = _batch(seed=12)
    idx, targets = label_positions(d["labels"])
    loss, parts = chunked_compound_loss(d["hs"][idx], d["ws"], targets, LossSpec(alpha=0.0, chunk_size=7))
    torch.testing.assert_close(loss, F.cross_entropy(d["hs"][idx] @ d["ws"].t(), targets))
    assert parts["distill_sum"].item() == 0.0


def test_label_positions_shift():
    """Position s predicts label s+1: the first labelled token is predicted by the position before it."""
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    idx, targets = label_positions(labels)
    assert idx.tolist() == [1, 2, 4] and targets.tolist() == [7, 8, 5]
    with pytest.raises(ValueError, match="batch, length"):
        label_positions(torch.tensor([1, 2, 3]))


def test_bad_inputs_raise_value_errors_naming_the_field():
    """Inconsistent shapes, teacher arguments and settings fail early, naming what is wrong."""
    d = _batch(seed=0)
    idx, targets = label_positions(d["labels"])
    hs, ht = d["hs"][idx], d["ht"][idx]
    spec = LossSpec()
    with pytest.raises(ValueError, match="student_lm_head"):
        chunked_compound_loss(hs, d["ws"][:, :5], targets, spec)
    with pytest.raises(ValueError, match="student_hidden"):
        chunked_compound_loss(hs[:-1], d["ws"], targets, spec)
    with pytest.raises(ValueError, match="teacher_lm_head"):
        chunked_compound_loss(hs, d["ws"], targets, spec, teacher_hidden=ht)
    with pytest.raises(ValueError, match="V=123"):
        chunked_compound_loss(hs, d["ws"], targets, spec, ht, d["wt"][:100])
    with pytest.raises(ValueError, match="weights"):
        chunked_compound_loss(hs, d["ws"], targets, spec, ht, d["wt"], weights=torch.ones(3))
    with pytest.raises(ValueError, match="taid t"):
        chunked_compound_loss(hs, d["ws"], targets, LossSpec(divergence="taid"), ht, d["wt"], taid_t=-0.1)
    for field, kwargs in (("divergence", {"divergence": "js"}), ("alpha", {"alpha": 1.5}),
                          ("temperature", {"temperature": 0.0}), ("chunk_size", {"chunk_size": 0})):
        with pytest.raises(ValueError, match=f"LossSpec.{field}"):
            LossSpec(**kwargs)


# ------------------------------------------------------------------ adaptive weighting


def test_adaptive_weight_formula_range_and_monotonicity():
    """AW = L_S/(L_S+L_T) ∈ (0,1), increasing in L_S/L_T; hand-computed values and edge cases."""
    ls = torch.tensor([1.0, 3.0, 1e-8, 50.0, 1e300], dtype=torch.float64)
    lt = torch.tensor([1.0, 1.0, 1.0, 1e-6, 1e300], dtype=torch.float64)
    w = adaptive_weight(ls, lt)
    want = [a / (a + b) if a + b < math.inf else 0.5 for a, b in zip(ls.tolist(), lt.tolist())]
    torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float64))
    assert w[0].item() == 0.5 and w[1].item() == pytest.approx(0.75)
    ratios = torch.logspace(-6, 6, 50, dtype=torch.float64)
    ws = adaptive_weight(ratios, torch.ones(50))
    assert bool(((ws > 0) & (ws < 1)).all()) and bool((ws[1:] > ws[:-1]).all())
    edge = adaptive_weight(torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert edge.tolist() == [0.5, 0.0, 1.0]


def test_adaptive_weight_floats_broadcasting_and_errors():
    """Floats in give a float; (S, 1) × (S, N) broadcasts; negative or NaN losses raise naming the side."""
    assert adaptive_weight(1.0, 3.0) == pytest.approx(0.25) and isinstance(adaptive_weight(1.0, 3.0), float)
    table = adaptive_weight(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0, 3.0], [2.0, 6.0]]))
    torch.testing.assert_close(table, torch.tensor([[0.5, 0.25], [0.5, 0.25]], dtype=torch.float64))
    with pytest.raises(ValueError, match="student_seq_loss.*-1.0"):
        adaptive_weight(torch.tensor([-1.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="teacher_seq_loss"):
        adaptive_weight(1.0, float("nan"))


# ------------------------------------------------------------------ cached top-k teacher signal


def test_topk_signal_exact_when_k_is_vocab():
    """With k = V the cached signal reproduces the teacher: the chunked loss equals the online teacher."""
    d = _batch(seed=13)
    idx, targets = label_positions(d["labels"])
    zt = d["ht"][idx] @ d["wt"].t()
    sig = topk_signal(zt, 123)
    assert torch.isinf(sig.tail_logmass).all()
    for kind in KINDS:
        spec = LossSpec(divergence=kind, temperature=1.7, chunk_size=6)
        online, _ = chunked_compound_loss(d["hs"][idx], d["ws"], targets, spec, d["ht"][idx], d["wt"], taid_t=0.5)
        cached, _ = chunked_compound_loss(d["hs"][idx], d["ws"], targets, spec, teacher_signal=sig, taid_t=0.5)
        assert cached.item() == pytest.approx(online.item(), rel=1e-6)


def test_topk_error_within_bound_and_tail_given_or_derived():
    """Per position |KL(p‖q) − KL(p̃‖q)| ≤ m·log(V−k) + 2m·max_tail|log q| (m = tail mass); the error
    shrinks to 0 as k → V; an explicit tail mass and the one derived from 1 − Σ top-k agree."""
    torch.manual_seed(0)
    v = 60
    zt = torch.randn(8, v, dtype=torch.float64) * 3
    zs = torch.randn(8, v, dtype=torch.float64)
    exact = token_kl(zs, zt)
    log_q = F.log_softmax(zs, -1)
    prev_max = math.inf
    for k in (1, 4, 16, 40, 59, 60):
        sig = topk_signal(zt, k)
        approx = token_kl(zs, sig.dense_logprobs(slice(0, 8), v))
        derived = TopKSignal(sig.logprobs, sig.indices).dense_logprobs(slice(0, 8), v)
        torch.testing.assert_close(F.log_softmax(derived.double(), -1).exp(),
                                   sig.dense_logprobs(slice(0, 8), v).double().exp(), rtol=1e-4, atol=1e-6)
        m = sig.tail_logmass.exp()
        in_tail = torch.ones_like(zt, dtype=torch.bool).scatter(1, sig.indices.long(), False)
        max_log_q = torch.where(in_tail, log_q.abs(), torch.zeros_like(log_q)).max(-1).values
        bound = m * math.log(max(v - k, 1)) + 2 * m * max_log_q
        err = (approx.double() - exact).abs()
        assert bool((err <= bound + 1e-5).all()), (k, err, bound)
        prev_max = min(prev_max, err.max().item())
    assert prev_max < 1e-5  # k = V is exact (float32 dense log-probs)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_with_topk_signal_equals_reference_on_dense_approximation(kind):
    """With k < V the chunked loss from a cached signal equals the logits path on the dense p̃ (values, grads)."""
    d = _batch(seed=14)
    idx, targets = label_positions(d["labels"])
    sig = topk_signal(d["ht"][idx] @ d["wt"].t(), 10)
    spec = LossSpec(divergence=kind, temperature=1.4, chunk_size=7)
    hs = d["hs"][idx].clone().requires_grad_(True)
    loss, _ = chunked_compound_loss(hs, d["ws"], targets, spec, teacher_signal=sig, taid_t=0.6)
    loss.backward()
    hs2 = d["hs"][idx].clone().requires_grad_(True)
    dense = sig.dense_logprobs(slice(0, targets.numel()), 123).double()
    ref = torch_reference(hs2 @ d["ws"].t(), dense, targets, torch.full((targets.numel(),), 0.5, dtype=torch.float64),
                          kind, 1.4, 0.6, targets.numel())
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(hs.grad, hs2.grad, rtol=1e-5, atol=1e-8)
