"""Teacher-signal cache (`teachers/signal_cache.py`): what is stored equals the teacher, row lookup follows batch order,
and a trainer reading the cache gives the online loss without running the teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distillkit_scd.data.collate import DistillationCollator
from distillkit_scd.data.formatting import tokenize_dataset
from distillkit_scd.models.loading import load_model
from distillkit_scd.tasks import load_task
from distillkit_scd.teachers.signal_cache import SignalCache, build_checkpoint_signals


@pytest.fixture(scope="module")
def train_rows(tiny_tokenizer):
    """A dozen tokenised synthetic train rows, with every 5th row dropped (holes in sample_index)."""
    split = load_task("synthetic", num_train=12, num_test=4, seed=3)["train"]
    rows, _ = tokenize_dataset(split, tiny_tokenizer, max_length=64)
    return rows.filter(lambda r: r["sample_index"] % 5 != 4)


@pytest.fixture(scope="module")
def teacher(tiny_pair):
    return load_model(str(tiny_pair[0])).eval()


def _reference_logprobs(teacher, rows, tokenizer) -> dict[int, torch.Tensor]:
    """Row by row, full forward with logits: the teacher's log-probs (float64) at each label position."""
    out = {}
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logits = teacher(input_ids=ids).logits[0].double()
        labels = torch.tensor(row["labels"])
        positions = [s for s in range(len(labels) - 1) if labels[s + 1] != -100]
        out[row["sample_index"]] = F.log_softmax(logits[positions], -1)
    return out


@pytest.mark.parametrize("k", [8, None])
def test_cache_equals_teacher_rows_in_batch_order(teacher, train_rows, tiny_tokenizer, k):
    """Top-k values/ids are the teacher's largest log-probs, the tail log-mass is log Σ of the rest, and
    `for_rows` returns a batch's label positions in `label_positions` order (row-major), for any row order."""
    vocab = teacher.config.vocab_size
    top_k = vocab if k is None else k
    collator = DistillationCollator(tiny_tokenizer.pad_token_id)
    cache = build_checkpoint_signals(teacher, train_rows, collator, top_k, batch_size=4, chunk_size=7)
    reference = _reference_logprobs(teacher, train_rows, tiny_tokenizer)

    order = [train_rows[i]["sample_index"] for i in (5, 0, 3)]
    signal = cache.for_rows(torch.tensor(order))
    want = torch.cat([reference[i] for i in order])  # (n, V)
    assert signal.logprobs.shape == (want.shape[0], top_k)
    torch.testing.assert_close(signal.logprobs.double(), want.topk(top_k, -1).values, atol=2e-5, rtol=0)
    picked = want.gather(1, signal.indices.long())
    torch.testing.assert_close(picked, signal.logprobs.double(), atol=2e-5, rtol=0)
    rest = want.scatter(1, signal.indices.long(), float("-inf")).logsumexp(-1)
    if k is None:
        assert bool(torch.isneginf(signal.tail_logmass).all())
        dense = signal.dense_logprobs(slice(None), vocab).double()
        torch.testing.assert_close(dense, want, atol=2e-5, rtol=0)
    else:
        torch.testing.assert_close(signal.tail_logmass.double(), rest, atol=2e-5, rtol=1e-5)


def test_cache_sequence_losses_serve_the_aw_table(teacher, train_rows, tiny_tokenizer):
    """The signals pass yields each row's teacher sequence CE L_T (float64 reference: −Σ log p(y) over its label
    positions); an AW table built from them equals the one that runs the teacher itself (one pass, not two)."""
    from distillkit_scd.teachers.aw_table import compute_aw_table

    collator = DistillationCollator(tiny_tokenizer.pad_token_id)
    cache = build_checkpoint_signals(teacher, train_rows, collator, 4, batch_size=4, chunk_size=7)
    reference = _reference_logprobs(teacher, train_rows, tiny_tokenizer)
    for row in train_rows:
        labels = torch.tensor(row["labels"])
        targets = labels[1:][labels[1:] != -100]
        want = -reference[row["sample_index"]].gather(1, targets.unsqueeze(1)).sum().item()
        assert cache.seq_loss[row["sample_index"]].item() == pytest.approx(want, rel=1e-5, abs=1e-5)
    from_teacher = compute_aw_table(teacher, [teacher], train_rows, batch_size=3, collator=collator)
    lt = cache.seq_loss[torch.tensor(train_rows["sample_index"])].unsqueeze(1)
    from_signals = compute_aw_table(teacher, None, train_rows, batch_size=3, collator=collator, teacher_losses=lt)
    torch.testing.assert_close(from_signals.teacher_loss, from_teacher.teacher_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_signals.weights, from_teacher.weights, rtol=1e-5, atol=1e-6)


def test_rows_out_of_order_refused(teacher, train_rows, tiny_tokenizer):
    collator = DistillationCollator(tiny_tokenizer.pad_token_id)
    shuffled = train_rows.select([1, 0, 2])
    with pytest.raises(ValueError, match="increasing sample_index"):
        build_checkpoint_signals(teacher, shuffled, collator, 4)


def test_saved_cache_round_trip_and_old_format(tmp_path, teacher, train_rows, tiny_tokenizer):
    """A saved cache loads back equal; a cache written before the tail was stored still loads (tail None →
    m = 1 − Σ top-k); a corrupt file is named in the error."""
    from safetensors.torch import save_file

    collator = DistillationCollator(tiny_tokenizer.pad_token_id)
    cache = build_checkpoint_signals(teacher, train_rows, collator, 6)
    tensors = {"logprobs": cache.logprobs, "indices": cache.indices, "offsets": cache.offsets}
    save_file({**tensors, "tail_logmass": cache.tail_logmass}, str(tmp_path / "new.safetensors"))
    save_file(tensors, str(tmp_path / "old.safetensors"))
    rows = torch.tensor([train_rows[2]["sample_index"]])
    new = SignalCache.load(tmp_path / "new.safetensors").for_rows(rows)
    old = SignalCache.load(tmp_path / "old.safetensors").for_rows(rows)
    torch.testing.assert_close(new.tail_logmass, cache.for_rows(rows).tail_logmass)
    assert old.tail_logmass is None
    vocab = teacher.config.vocab_size
    torch.testing.assert_close(old.dense_logprobs(slice(None), vocab), new.dense_logprobs(slice(None), vocab),
                               atol=1e-4, rtol=0)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        SignalCache.load(tmp_path / "bad.safetensors")


def test_trainer_with_exact_cache_matches_online_teacher_without_teacher_passes(tmp_path, tiny_pair, teacher,
                                                                               train_rows, tiny_tokenizer):
    """k = V: the cached TD and TAID losses equal the online ones on the same batch, and the cached trainer
    runs the teacher on 0 rows (the online one on every row)."""
    from datasets import Dataset
    from trl import SFTConfig

    from distillkit_scd.losses import LossSpec, TAIDState
    from distillkit_scd.training.trainer import DistillationTrainer

    collator = DistillationCollator(tiny_tokenizer.pad_token_id)
    vocab = teacher.config.vocab_size
    cache = build_checkpoint_signals(teacher, train_rows, collator, vocab)
    batch = collator([train_rows[i] for i in range(len(train_rows))])
    student = load_model(str(tiny_pair[1]))
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_steps=1,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    dummy = Dataset.from_list([{"input_ids": [0, 1], "labels": [0, 1]}])
    for divergence in ("forward_kl", "taid"):
        losses = {}
        for mode in ("online", "cached"):
            trainer = DistillationTrainer(
                model=student, args=args, train_dataset=dummy, processing_class=tiny_tokenizer,
                teacher_model=teacher, loss_spec=LossSpec(divergence=divergence, alpha=0.5),
                taid_state=TAIDState() if divergence == "taid" else None,
                teacher_signals=[cache] if mode == "cached" else None)
            trainer.model.train()
            losses[mode] = trainer.compute_loss(trainer.model, dict(batch)).item()
            assert trainer.teacher_forward_rows == (len(train_rows) if mode == "online" else 0)
        assert losses["cached"] == pytest.approx(losses["online"], rel=1e-5), divergence


@pytest.mark.slow
def test_cached_distillation_matches_online_and_runs_teacher_only_for_validation(tmp_path):
    """The `signals` stage + TD with `teacher_signal: cached` (k = V, exact) against the online teacher on
    the micro recipe: the same logged losses at every step, and teacher rows run only for the validation
    loss (counted in the schedule log) instead of for every training row."""
    import json

    from distillkit_scd.config import load_recipe
    from distillkit_scd.teachers.signal_cache import run_signal_cache
    from distillkit_scd.training.distill import run_distill
    from distillkit_scd.training.sft import run_sft
    from tests.test_end_to_end import write_recipe

    recipe_path = write_recipe(tmp_path, methods="[td]", T=4, zero_shot="false")
    online = load_recipe(recipe_path)
    run_sft(online, "teacher")
    run_sft(online, "student")
    folder = run_distill(online, "td")
    want = json.loads((folder / "schedule_log.json").read_text())
    want_losses = _logged_losses(folder)
    folder.rename(folder.with_name("td_online"))

    cached = load_recipe(recipe_path, ["distill.teacher_signal=cached", "distill.cache_top_k=100000"])
    run_signal_cache(cached)
    got = json.loads((run_distill(cached, "td") / "schedule_log.json").read_text())
    got_losses = _logged_losses(folder)
    assert len(got_losses) == len(want_losses) > 0
    for step, (a, b) in enumerate(zip(got_losses, want_losses)):
        # transformers 4.57 logs `loss` rounded to 4 decimals; our parts carry 6
        assert a["loss"] == pytest.approx(b["loss"], abs=5e-4), step
        for key in ("loss_distill", "loss_ce"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (step, key)
    from distillkit_scd.pipeline.workspace import Workspace

    ws = Workspace(online)
    train, val = ws.tokenized_splits(ws.tokenizer())
    sizes = [min(16, len(train) - s) for s in range(0, len(train), 16)]  # one epoch's batches, in order
    train_rows = sum((sizes * 8)[:2 * 4])  # N = 2 stages × T = 4 steps; the epoch's last batch is short
    assert got["teacher_forward_rows"] == 2 * len(val)  # the validation loss at each of the 2 stage ends
    assert want["teacher_forward_rows"] == train_rows + 2 * len(val)
    assert got["teacher_rows"] == {"train": 0, "validation": 2 * len(val), "scd_probe": 0}
    assert want["teacher_rows"] == {"train": train_rows, "validation": 2 * len(val), "scd_probe": 0}


def _logged_losses(folder) -> list[dict]:
    import json

    last = max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [e for e in json.loads((last / "trainer_state.json").read_text())["log_history"] if "loss_distill" in e]
