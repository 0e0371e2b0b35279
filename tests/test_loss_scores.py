"""Loss-only scoring (chat metric `none`) against a plain per-sample reference."""

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset


def test_per_sample_mean_answer_ce_matches_plain_forward(tiny_pair, tiny_tokenizer):
    """Each sample's score = mean over its answer tokens of −log p (full-logits float64 reference);
    the split's loss is the mean of the samples; batch size does not change anything."""
    from distillkit_scd.data.formatting import tokenize_example
    from distillkit_scd.evaluation.loss_scores import score_by_loss
    from distillkit_scd.models.loading import load_model

    model = load_model(str(tiny_pair[1]))
    rows = [{"id": f"r{i}", "answer": ans, "messages": [{"role": "user", "content": q},
                                                        {"role": "assistant", "content": ans}]}
            for i, (q, ans) in enumerate([("What is (3 + 4) mod 10?", "7"), ("Reverse the letters: A B C", "C B A"),
                                          ("Which code is assigned to fever?", "K17 and more words")])]
    split = Dataset.from_list(rows)
    want = []
    for row in rows:
        enc = tokenize_example(row["messages"], tiny_tokenizer, 64)
        ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor(enc["labels"])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        nll = [-logp[t - 1, labels[t]].item() for t in range(1, len(labels)) if labels[t] != -100]
        want.append(sum(nll) / len(nll))
    for batch_size in (1, 3):
        recipe = SimpleNamespace(task=SimpleNamespace(max_length=64), evaluation=SimpleNamespace(batch_size=batch_size),
                                 distill=SimpleNamespace(chunk_size=5))
        metrics, samples = score_by_loss(model, tiny_tokenizer, split, recipe)
        assert [s["id"] for s in samples] == ["r0", "r1", "r2"]
        assert [s["scores"]["loss"] for s in samples] == pytest.approx(want, rel=1e-5)
        assert metrics["loss"] == pytest.approx(sum(want) / 3, rel=1e-5) and metrics["dropped"] == 0


def test_metric_none_selects_the_lowest_loss_and_skips_generation(tiny_pair, tiny_tokenizer, monkeypatch):
    """With metric `none` the evaluate stage scores by loss (no generation call), checkpoint selection takes
    the lowest loss under both protocols, and SFT's p(best) falls back to the validation loss."""
    import distillkit_scd.evaluation.generation
    from distillkit_scd.evaluation.chat_metrics import build_chat_scoring
    from distillkit_scd.evaluation.stage import choose_checkpoint, score_model
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.training.sft import _scores_generations

    monkeypatch.setattr(distillkit_scd.evaluation.generation, "generate", lambda *a, **k: pytest.fail("generated"))
    split = Dataset.from_list([{"id": "a", "answer": "7", "messages": [{"role": "user", "content": "3 + 4?"},
                                                                      {"role": "assistant", "content": "7"}]}])
    recipe = SimpleNamespace(task=SimpleNamespace(max_length=64, name="chat", options={"metric": "none"}),
                             evaluation=SimpleNamespace(batch_size=4), distill=SimpleNamespace(chunk_size=8),
                             sft=SimpleNamespace(select_by="val_score"))
    metrics, samples = score_model(load_model(str(tiny_pair[1])), tiny_tokenizer, split,
                                   build_chat_scoring("chat", "none"), recipe, 8)
    assert metrics["loss"] == samples[0]["scores"]["loss"] > 0
    scored = [{"checkpoint": f"step-{i}", "path": str(i), "test": {"loss": t}, "validation": {"loss": v},
               "samples": []} for i, (t, v) in enumerate([(2.0, 1.5), (1.0, 1.2), (1.5, 1.0)])]
    sel = choose_checkpoint(scored, "chat", "validation", options={"metric": "none"})
    assert sel["protocols"]["clean"]["index"] == 2 and sel["protocols"]["paper"]["index"] == 1
    assert not _scores_generations(recipe)
