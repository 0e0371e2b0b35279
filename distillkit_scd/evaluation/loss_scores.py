"""Loss-only scoring (chat metric `none`): each sample's mean token cross-entropy of its gold answer.

When a user's data has no answer a rule can check (free text), the model's loss on the gold answer is
what can be compared across rows: Table 1 shows it (lower is better) and checkpoint selection takes the
lowest validation loss. Per-sample value: −(1/|y|) Σ_s log p(y_s | y_<s) over the answer tokens y (the
assistant turn, as in training); the split's number is the mean over samples, so the cell can be
recomputed from the samples like every other. Rows whose answer does not fit `task.max_length` are left
out (and counted in `metrics.dropped`).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def score_by_loss(model, tokenizer, split, recipe) -> tuple[dict, list[dict]]:
    """(metrics, samples) with `metrics["loss"]` the mean of the per-sample `scores["loss"]`.

    Raises:
        ValueError: an empty split, or one whose every answer is longer than `task.max_length`.
    """
    from distillkit_scd.data.collate import IGNORE_INDEX, DistillationCollator
    from distillkit_scd.data.formatting import tokenize_dataset
    from distillkit_scd.teachers.aw_table import length_batches, row_losses

    data, report = tokenize_dataset(split, tokenizer, recipe.task.max_length, keep=("answer",), name="loss scoring")
    batches = length_batches(data, recipe.evaluation.batch_size, DistillationCollator(tokenizer.pad_token_id))
    sums = row_losses(model, batches, len(data), recipe.distill.chunk_size)  # (S,) float64, summed over answer tokens
    counts = [sum(v != IGNORE_INDEX for v in list(labels)[1:]) for labels in data["labels"]]  # predicted positions
    samples = []
    for rid, gold, total, n in zip(data["id"], data["answer"], sums.tolist(), counts):
        loss = total / n if n else 0.0
        samples.append({"id": rid, "gold": gold, "generation": "", "prediction": None, "parsed": bool(n),
                        "scores": {"loss": loss}})
    metrics = {"loss": sum(s["scores"]["loss"] for s in samples) / len(samples), "dropped": len(report.dropped),
               "unparsed": sum(not s["parsed"] for s in samples)}
    return metrics, samples
