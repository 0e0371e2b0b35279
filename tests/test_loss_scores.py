"""Loss-only scoring (chat metric `none`) against a plain per-sample reference."""

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset


def test_per_sample_mean_answer_ce_matches_plain_forward(tiny_pair, tiny_tokenizer):
    """Each sample's score = mean over its answer tokens of −log p (full-logits float64 reference);
    the split's loss is the mean of the samples; batch size does not change anything."""
    from distillkit_scd.formatting import tokenize_example
    from distillkit_scd.loss_scores import score_by_loss
    from distillkit_scd.models import load_model

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
