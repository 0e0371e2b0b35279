"""The fused per-chunk kernel (`chunk_kernel.chunk_terms`) against the plain autograd path, for every
divergence at T = 1 (the fused branches) and T ≠ 1, and its buffer reuse (`Workspace`) across calls."""

import pytest
import torch

from distillkit_scd.losses import LossSpec, chunked_compound_loss, token_divergence, topk_signal
from distillkit_scd.losses.chunk_kernel import Workspace, chunk_terms

KINDS = ["forward_kl", "reverse_kl", "taid"]


def _chunk(seed=0, c=9, v=37):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(c, v, dtype=torch.float64, generator=g) * 2
    zt = torch.randn(c, v, dtype=torch.float64, generator=g) * 2
    y = torch.randint(0, v, (c,), generator=g)
    w = torch.rand(c, dtype=torch.float64, generator=g)
    return z, zt, y, w


def _reference(z, zt, y, w, kind, temp, t):
    """Per-position divergence and CE, and d(Σ w·D + (1−w)·CE)/dz, by plain autograd on the logits."""
    z = z.clone().requires_grad_(True)
    div = token_divergence(kind, z, zt, temp, t)
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    (w * div + (1 - w) * ce).sum().backward()
    return div.detach(), ce.detach(), z.grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temp", [1.0, 1.7])
def test_chunk_terms_equal_autograd_reference(kind, temp):
    z, zt, y, w = _chunk(seed=len(kind) + int(temp * 10))
    want_div, want_ce, want_grad = _reference(z, zt, y, w, kind, temp, 0.35)
    div, ce, grad = chunk_terms(z.clone(), zt.clone(), y, w, kind, temp, 0.35, True, torch.empty_like(z))
    torch.testing.assert_close(div, want_div, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ce, want_ce, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-12)
    div2, ce2, none = chunk_terms(z.clone(), zt.clone(), y, w, kind, temp, 0.35, False, torch.empty_like(z))
    assert none is None
    torch.testing.assert_close(div2, want_div, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ce2, want_ce, rtol=1e-10, atol=1e-12)


def test_chunk_terms_without_teacher_is_weighted_ce():
    z, _, y, w = _chunk(seed=4)
    zr = z.clone().requires_grad_(True)
    ce_ref = torch.nn.functional.cross_entropy(zr, y, reduction="none")
    ((1 - w) * ce_ref).sum().backward()
    div, ce, grad = chunk_terms(z.clone(), None, y, w, "forward_kl", 1.0, 1.0, True, torch.empty_like(z))
    assert torch.equal(div, torch.zeros_like(div))
    torch.testing.assert_close(ce, ce_ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, zr.grad, rtol=1e-9, atol=1e-12)


def test_workspace_reuses_buffers_and_grows():
    ws = Workspace()
    a = ws.take("z", 4, 10, torch.float32, "cpu")
    b = ws.take("z", 3, 10, torch.float32, "cpu")  # smaller: same storage
    assert b.data_ptr() == a.data_ptr() and b.shape == (3, 10)
    c = ws.take("z", 5, 10, torch.float32, "cpu")  # larger: a new buffer
    assert c.shape == (5, 10) and c.data_ptr() != a.data_ptr()
    assert ws.take("z", 2, 3, torch.float64, "cpu").dtype == torch.float64


@pytest.mark.parametrize("kind", KINDS)
def test_shared_workspace_across_calls_changes_nothing(kind):
    """Two losses of different sizes through one workspace (the trainer's CPU case) equal fresh-buffer calls,
    with an online teacher and with a cached top-k signal (written into the workspace buffer)."""
    g = torch.Generator().manual_seed(7)
    ws_head, wt = torch.randn(41, 8, dtype=torch.float64, generator=g), torch.randn(41, 6, dtype=torch.float64,
                                                                                     generator=g)
    spec = LossSpec(divergence=kind, chunk_size=5)
    shared = Workspace()
    for n in (13, 7, 13):
        hs, ht = torch.randn(n, 8, dtype=torch.float64, generator=g), torch.randn(n, 6, dtype=torch.float64,
                                                                                   generator=g)
        y = torch.randint(0, 41, (n,), generator=g)
        signal = topk_signal(ht @ wt.t(), 5)
        for teacher in ({"teacher_hidden": ht, "teacher_lm_head": wt}, {"teacher_signal": signal}):
            got, want = [], []
            for ws, out in ((shared, got), (None, want)):
                h = hs.clone().requires_grad_(True)
                loss, parts = chunked_compound_loss(h, ws_head, y, spec, taid_t=0.6, workspace=ws, **teacher)
                loss.backward()
                out.extend([loss.detach(), parts["distill_sum"], h.grad])
            for a, b in zip(got, want):
                assert torch.equal(a, b)
