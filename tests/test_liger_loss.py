"""The optional Liger-Kernel fused path equals our chunked compound loss (values, gradients, logged parts).

Runs where Liger-Kernel is installed (its chunked losses are plain PyTorch, so CPU works); skips otherwise.
"""

from __future__ import annotations

import pytest
import torch

from distillkit_scd.liger_loss import check_liger_supported, liger_available, liger_compound_loss
from distillkit_scd.losses import LossSpec, chunked_compound_loss

needs_liger = pytest.mark.skipif(not liger_available(), reason="Liger-Kernel not installed (pip install liger-kernel)")


def _inputs(seed: int, n: int = 37, h: int = 12, ht: int = 20, v: int = 53):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, h, generator=g, dtype=torch.float64)
    ws = torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5
    ht_ = torch.randn(n, ht, generator=g, dtype=torch.float64)
    wt = torch.randn(v, ht, generator=g, dtype=torch.float64) * 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    return hs, ws, ht_, wt, targets


@needs_liger
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("temperature,alpha,num_items,chunk", [(1.0, 0.5, None, 8), (2.0, 0.3, 90, 16),
                                                               (0.7, 1.0, 50, 64), (1.5, 0.0, None, 5)])
def test_liger_equals_chunked_loss(divergence, temperature, alpha, num_items, chunk):
    hs, ws, ht, wt, targets = _inputs(int(temperature * 10 + alpha * 100))
    spec = LossSpec(divergence=divergence, temperature=temperature, alpha=alpha, chunk_size=chunk)
    results = []  # ours in float64 (the reference), Liger on the same numbers in float32 (it accumulates in fp32)
    for fn, dtype in ((chunked_compound_loss, torch.float64), (liger_compound_loss, torch.float32)):
        a, b = (x.detach().to(dtype).clone().requires_grad_() for x in (hs, ws))
        loss, parts = fn(a, b, targets, spec, ht.to(dtype), wt.to(dtype), num_items=num_items)
        loss.backward()
        results.append((loss.detach().double(), a.grad.double(), b.grad.double(), parts))
    (l0, ga0, gb0, p0), (l1, ga1, gb1, p1) = results
    torch.testing.assert_close(l1, l0, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(ga1, ga0, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb1, gb0, rtol=1e-4, atol=1e-6)
    for key in ("distill_sum", "ce_sum", "weight_sum"):
        torch.testing.assert_close(p1[key].double(), p0[key].double(), rtol=2e-6, atol=1e-6, msg=key)
    assert p1["tokens"] == p0["tokens"] == targets.shape[0]


@needs_liger
def test_liger_all_ignored_batch_is_zero_and_connected():
    hs, ws, ht, wt, _ = _inputs(0, n=0)
    hs.requires_grad_()
    loss, parts = liger_compound_loss(hs, ws, torch.zeros(0, dtype=torch.long), LossSpec(), ht, wt)
    loss.backward()
    assert loss.item() == 0.0 and parts["tokens"] == 0 and hs.grad is not None


def test_unsupported_settings_are_named():
    with pytest.raises(ValueError, match="distill.fused_loss.*forward_kl or reverse_kl"):
        check_liger_supported("taid", "td", "online")
    for method in ("taid", "scd_aw"):
        with pytest.raises(ValueError, match=f"cannot express {method}"):
            check_liger_supported("forward_kl", method, "online")
    with pytest.raises(ValueError, match="online teacher"):
        check_liger_supported("forward_kl", "td", "cached")
