"""Every loss against an independent float64 reference written as plain loops, plus invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from distillkit_scd.losses import (
    LossSpec,
    adaptive_weight,
    chunked_compound_loss,
    compound_loss_from_logits,
    label_positions,
    taid_target,
    token_divergence,
    token_kl,
    token_reverse_kl,
    topk_signal,
)

KINDS = ["forward_kl", "reverse_kl", "taid"]


def _softmax_row(z, temp=1.0):
    m = max(v / temp for v in z)
    e = [math.exp(v / temp - m) for v in z]
    s = sum(e)
    return [x / s for x in e]


def ref_divergence(kind, zs, zt, temp=1.0, t=1.0):
    """Plain-Python KL for one position (lists of floats)."""
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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_token_divergence_matches_loop_reference(kind, temp):
    """Per-position divergences equal a float64 loop over positions and vocabulary."""
    torch.manual_seed(0)
    zs, zt = torch.randn(5, 23) * 3, torch.randn(5, 23) * 3
    got = token_divergence(kind, zs, zt, temp, taid_t=0.3)
    want = [ref_divergence(kind, a.tolist(), b.tolist(), temp, 0.3) for a, b in zip(zs.double(), zt.double())]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-5)


def test_token_kl_matches_torch_kl_div():
    """Forward KL agrees with F.kl_div(log q, log p, log_target=True) summed over the vocabulary."""
    torch.manual_seed(1)
    zs, zt = torch.randn(7, 31), torch.randn(7, 31)
    want = F.kl_div(F.log_softmax(zs, -1), F.log_softmax(zt, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_kl(zs, zt), want)
    rev = F.kl_div(F.log_softmax(zt, -1), F.log_softmax(zs, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_reverse_kl(zs, zt), rev)


def test_divergences_zero_when_student_equals_teacher():
    """KL of a distribution to itself is 0 for every kind and t."""
    z = torch.randn(4, 17)
    for kind in KINDS:
        torch.testing.assert_close(token_divergence(kind, z, z.clone(), 1.5, 0.6), torch.zeros(4), atol=1e-5,
                                   rtol=0)


def test_taid_target_endpoints():
    """p_t is the teacher at t=1 and the (detached) student at t=0."""
    zs, zt = torch.randn(3, 11, requires_grad=True), torch.randn(3, 11)
    torch.testing.assert_close(taid_target(zs, zt, 1.0), F.log_softmax(zt, -1))
    torch.testing.assert_close(taid_target(zs, zt, 0.0), F.log_softmax(zs.detach(), -1))
    assert not taid_target(zs, zt, 0.5).requires_grad


def _batch(seed=0, b=3, t=17, h=31, v=123, th=19):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :5] = -100  # prompt
    labels[1, 12:] = -100  # padding
    labels[2, :9] = -100
    return {
        "hs": torch.randn(b * t, h, generator=g, dtype=torch.float64),
        "ws": torch.randn(v, h, generator=g, dtype=torch.float64) * 0.3,
        "ht": torch.randn(b * t, th, generator=g, dtype=torch.float64),
        "wt": torch.randn(v, th, generator=g, dtype=torch.float64) * 0.3,
        "labels": labels,
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_equals_loop_reference_values_and_grads(kind, chunk):
    """Chunked loss on hidden states == float64 loop reference, for values and for gradients."""
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

    # Reference: float64 loop; gradients by autograd on the plain-Python-free float64 tensor formula.
    zs_rows = (d["hs"][idx] @ d["ws"].t()).tolist()
    zt_rows = (d["ht"][idx] @ d["wt"].t()).tolist()
    want = ref_compound(zs_rows, zt_rows, targets.tolist(), weights.tolist(), kind, 1.3, 0.55, n + 3)
    assert loss.item() == pytest.approx(want, rel=1e-5)

    hs2 = d["hs"].clone().requires_grad_(True)
    ws2 = d["ws"].clone().requires_grad_(True)
    logits = hs2[idx] @ ws2.t()
    t_logits = d["ht"][idx] @ d["wt"].t()
    log_q = F.log_softmax(logits / 1.3, -1)
    if kind == "taid":
        log_p = F.log_softmax(((1 - 0.55) * logits.detach() + 0.55 * t_logits) / 1.3, -1)
    else:
        log_p = F.log_softmax(t_logits / 1.3, -1)
    div = (log_p.exp() * (log_p - log_q)).sum(-1) if kind != "reverse_kl" else (log_q.exp() * (log_q - log_p)).sum(-1)
    ce = F.cross_entropy(logits, targets, reduction="none")
    ref = ((weights * div * 1.3**2 + (1 - weights) * ce).sum()) / (n + 3)
    ref.backward()
    torch.testing.assert_close(hs.grad, hs2.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(ws.grad, ws2.grad, rtol=1e-4, atol=1e-7)
    assert parts["tokens"] == n


def test_chunked_equals_unchunked_reference_path():
    """`chunked_compound_loss` == `compound_loss_from_logits` on the materialised logits."""
    d = _batch(seed=5)
    idx, targets = label_positions(d["labels"])
    spec = LossSpec(chunk_size=5)
    loss_c, parts_c = chunked_compound_loss(d["hs"][idx], d["ws"], targets, spec, d["ht"][idx], d["wt"])
    loss_u, parts_u = compound_loss_from_logits(d["hs"][idx] @ d["ws"].t(), d["ht"][idx] @ d["wt"].t(), targets,
                                                spec)
    torch.testing.assert_close(loss_c.double(), loss_u.double(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(parts_c["ce_sum"].double(), parts_u["ce_sum"].double(), rtol=1e-6, atol=1e-8)


def test_alpha_endpoints_reduce_to_ce_and_pure_kl():
    """α=0 is plain CE (teacher ignored); α=1 is the pure mean KL."""
    d = _batch(seed=2)
    idx, targets = label_positions(d["labels"])
    zs, zt = d["hs"][idx] @ d["ws"].t(), d["ht"][idx] @ d["wt"].t()
    l0, _ = chunked_compound_loss(d["hs"][idx], d["ws"], targets, LossSpec(alpha=0.0), d["ht"][idx], d["wt"])
    torch.testing.assert_close(l0.double(), F.cross_entropy(zs, targets).double(), rtol=1e-6, atol=1e-8)
    l1, _ = chunked_compound_loss(d["hs"][idx], d["ws"], targets, LossSpec(alpha=1.0), d["ht"][idx], d["wt"])
    torch.testing.assert_close(l1.double(), token_kl(zs, zt).double().mean(), rtol=1e-6, atol=1e-8)


def test_all_ignored_batch_gives_zero_not_nan():
    """A micro-batch with no label tokens contributes 0 loss and 0 gradients."""
    labels = torch.full((2, 6), -100)
    idx, targets = label_positions(labels)
    hs = torch.randn(12, 8, requires_grad=True)
    ws = torch.randn(13, 8, requires_grad=True)
    loss, _ = chunked_compound_loss(hs[idx], ws, targets, LossSpec(), torch.randn(12, 4)[idx], torch.randn(13, 4),
                                    num_items=0)
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert torch.count_nonzero(hs.grad) == 0 and torch.count_nonzero(ws.grad) == 0


def test_gradient_accumulation_invariance():
    """4 micro-batches normalised by the total token count sum to the 1-batch loss and gradients."""
    d = _batch(seed=7, b=4)
    idx, targets = label_positions(d["labels"])
    total_tokens = targets.numel()
    spec = LossSpec(chunk_size=8)
    ws_full = d["ws"].clone().requires_grad_(True)
    full, _ = chunked_compound_loss(d["hs"][idx], ws_full, targets, spec, d["ht"][idx], d["wt"])
    full.backward()

    ws_acc = d["ws"].clone().requires_grad_(True)
    summed = 0.0
    t = d["labels"].shape[1]
    for b in range(4):
        lab = d["labels"][b : b + 1]
        i, y = label_positions(lab)
        hs = d["hs"][b * t : (b + 1) * t]
        ht = d["ht"][b * t : (b + 1) * t]
        loss, _ = chunked_compound_loss(hs[i], ws_acc, y, spec, ht[i], d["wt"], num_items=total_tokens)
        loss.backward()
        summed += loss.item()
    assert summed == pytest.approx(full.item(), rel=1e-9)
    torch.testing.assert_close(ws_acc.grad, ws_full.grad, rtol=1e-9, atol=1e-12)


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


def test_label_positions_shift():
    """Position s predicts label s+1: the first labelled token is predicted by the position before it."""
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    idx, targets = label_positions(labels)
    assert idx.tolist() == [1, 2, 4] and targets.tolist() == [7, 8, 5]


def test_adaptive_weight_formula_range_and_monotonicity():
    """AW = L_S/(L_S+L_T) ∈ (0,1), increasing in L_S/L_T; hand-computed values and edge cases."""
    ls = torch.tensor([1.0, 3.0, 1e-8, 50.0])
    lt = torch.tensor([1.0, 1.0, 1.0, 1e-6])
    w = adaptive_weight(ls, lt)
    torch.testing.assert_close(w, (ls.double() / (ls.double() + lt.double())))
    assert w[0].item() == pytest.approx(0.5) and w[1].item() == pytest.approx(0.75)
    ratios = torch.logspace(-6, 6, 50, dtype=torch.float64)
    ws = adaptive_weight(ratios, torch.ones(50))
    assert bool(((ws > 0) & (ws < 1)).all()) and bool((ws[1:] > ws[:-1]).all())
    edge = adaptive_weight(torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert edge.tolist() == [0.5, 0.0, 1.0]
    with pytest.raises(ValueError):
        adaptive_weight(torch.tensor([-1.0]), torch.tensor([1.0]))


def test_topk_signal_exact_when_k_is_vocab_and_close_otherwise():
    """With k = V the cached signal reproduces the teacher exactly; with small k the KL error is small
    when the teacher is peaked, and bounded by the tail mass."""
    torch.manual_seed(0)
    zt = torch.randn(6, 50) * 4
    zs = torch.randn(6, 50)
    full = token_kl(zs, zt)
    sig = topk_signal(zt, 50)
    torch.testing.assert_close(token_kl(zs, sig.dense_logprobs(slice(0, 6), 50)), full, rtol=1e-5, atol=1e-5)
    sig8 = topk_signal(zt, 8)
    approx = token_kl(zs, sig8.dense_logprobs(slice(0, 6), 50))
    tail = 1 - sig8.logprobs.exp().sum(-1)
    assert bool((tail >= 0).all())
    assert (approx - full).abs().max().item() < 0.5
