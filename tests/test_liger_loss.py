"""The optional Liger-Kernel fused path equals our chunked compound loss (values, gradients, logged parts).

Runs where Liger-Kernel is installed (its chunked losses are plain PyTorch, so CPU works); skips otherwise.
"""

from __future__ import annotations

import pytest
import torch

from distillkit_scd.losses import LossSpec, chunked_compound_loss
from distillkit_scd.losses.liger_loss import liger_available, liger_compound_loss

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


def test_liger_applies_only_where_it_is_exact(monkeypatch):
    """Forward/reverse KL with a fixed α and an online teacher; not TAID, AW or cached signals. A recipe
    asking for Liger where it is not installed is told how to install it."""
    from distillkit_scd.losses import liger_loss

    assert liger_loss.liger_applies("forward_kl", use_aw=False, cached=False)
    assert liger_loss.liger_applies("reverse_kl", use_aw=False, cached=False)
    assert not liger_loss.liger_applies("taid", use_aw=False, cached=False)
    assert not liger_loss.liger_applies("forward_kl", use_aw=True, cached=False)
    assert not liger_loss.liger_applies("forward_kl", use_aw=False, cached=True)
    monkeypatch.setattr(liger_loss, "liger_available", lambda: False)
    with pytest.raises(ValueError, match="distill.fused_loss.*pip install liger-kernel"):
        liger_loss.check_liger_available()


@needs_liger
@pytest.mark.parametrize("use_aw", [False, True])
def test_trainer_with_liger_trains_like_ours(tmp_path, tiny_pair, tiny_tokenizer, use_aw):
    """TD through `DistillationTrainer(fused_loss="liger")` for 3 steps: the same per-step losses and final
    weights as the built-in loss (float32 tolerance); with AW the trainer keeps our loss (Liger cannot weight
    per sample), so the runs are identical. SGD, so float32 noise in a near-zero gradient is not turned into
    a full AdamW step; bf16=False, as TRL 0.25's SFTConfig would otherwise autocast CPU matmuls to bf16."""
    from trl import SFTConfig

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.data.formatting import tokenize_dataset
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.tasks import load_task
    from distillkit_scd.training.trainer import DistillationTrainer

    rows, _ = tokenize_dataset(load_task("synthetic", num_train=24, num_test=4, seed=2)["train"], tiny_tokenizer, 64)
    if use_aw:
        rows = rows.add_column("aw", [[0.2 + 0.03 * i] for i in range(len(rows))])
    runs = {}
    for fused in ("none", "liger"):
        args = SFTConfig(output_dir=str(tmp_path / fused), report_to="none", use_cpu=True, bf16=False, max_steps=3,
                         logging_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                         learning_rate=1e-2, optim="sgd", remove_unused_columns=False, save_strategy="no", seed=0,
                         dataset_kwargs={"skip_prepare_dataset": True})
        trainer = DistillationTrainer(
            model=load_model(str(tiny_pair[1])), args=args, train_dataset=rows, processing_class=tiny_tokenizer,
            data_collator=DistillationCollator(tiny_tokenizer.pad_token_id),
            teacher_model=load_model(str(tiny_pair[0])), loss_spec=LossSpec(temperature=2.0, alpha=0.4),
            use_aw=use_aw, fused_loss=fused)
        assert trainer.use_liger == (fused == "liger" and not use_aw)
        trainer.train()
        logs = [v for e in trainer.state.log_history if "loss_ce" in e
                for v in (e["loss"], e["loss_distill"], e["loss_ce"])]
        runs[fused] = (logs, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    assert len(runs["liger"][0]) == 3 * 3
    assert runs["liger"][0] == pytest.approx(runs["none"][0], rel=1e-4, abs=1e-6)
    for name, value in runs["none"][1].items():
        torch.testing.assert_close(runs["liger"][1][name], value, rtol=1e-4, atol=1e-5, msg=name)
