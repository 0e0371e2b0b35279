"""TAID's loss mix is a recorded choice: `distill.taid.ce_weight` unset mixes α·TAID + (1−α)·CE (the
paper's shared compound loss); 0 trains on the TAID term alone, as the official code (distil ratio 1.0)."""

import pytest
import torch

from distillkit_scd.config import recipe_from_dict
from distillkit_scd.losses import chunked_compound_loss
from distillkit_scd.training.distill import loss_spec


def _distill(**taid):
    return recipe_from_dict({"name": "t", "output_dir": "t", "models": {"teacher": "tiny:teacher",
                             "student": "tiny:student"}, "task": {"name": "synthetic"},
                             "distill": {"alpha": 0.3, "taid": taid}}).distill


def test_ce_weight_sets_the_taid_mix_only():
    assert loss_spec("taid", _distill()).alpha == 0.3  # unset: 1 − ce weight = distill.alpha
    assert loss_spec("taid", _distill(ce_weight=0.0)).alpha == 1.0  # official: the TAID term alone
    assert loss_spec("taid", _distill(ce_weight=0.25)).alpha == 0.75
    assert loss_spec("td", _distill(ce_weight=0.0)).alpha == 0.3  # other rows keep α
    assert loss_spec("taid", _distill()).divergence == "taid"
    with pytest.raises(ValueError, match="distill.taid.ce_weight"):
        _distill(ce_weight=1.5)


def test_ce_weight_zero_is_the_taid_term_alone():
    """With ce_weight 0 the loss is mean_tokens KL(p_t ‖ q), p_t = softmax((1−t)·z_s + t·z_t), in float64."""
    torch.manual_seed(0)
    n, h, v, t = 7, 5, 11, 0.6
    hs, ht = torch.randn(n, h, dtype=torch.float64), torch.randn(n, h, dtype=torch.float64)
    ws, wt = torch.randn(v, h, dtype=torch.float64), torch.randn(v, h, dtype=torch.float64)
    targets = torch.randint(0, v, (n,))
    loss, _ = chunked_compound_loss(hs, ws, targets, loss_spec("taid", _distill(ce_weight=0.0)), teacher_hidden=ht,
                                    teacher_lm_head=wt, taid_t=t)
    zs, zt = hs @ ws.T, ht @ wt.T
    want = 0.0
    for i in range(n):
        p = torch.softmax((1 - t) * zs[i] + t * zt[i], -1)
        want += float((p * (p.log() - torch.log_softmax(zs[i], -1))).sum())
    assert loss.item() == pytest.approx(want / n, rel=1e-10)
