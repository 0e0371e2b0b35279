"""Rows → token ids with the model's chat template, labels on the assistant's tokens only.

The prompt is tokenised with the generation prompt, the full conversation without; the prompt must be
a prefix of the full ids (true for Llama-3-style templates, checked for every row), and everything after
it — the answer and its end-of-turn token — is labelled. Too-long rows are cut in the *middle of the
prompt* (keeping the instructions at the start and the question/generation header at the end); the
answer is never cut: a row whose answer alone does not fit is dropped, and both are counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from datasets import Dataset

from distillkit_scd.collate import IGNORE_INDEX

logger = logging.getLogger(__name__)


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys"):  # transformers 5 may return a BatchEncoding
        out = out["input_ids"]
    return list(out)


def check_messages(messages: Sequence[dict], where: str) -> None:
    """Every training row ends with a non-empty assistant turn after at least one prompt turn."""
    if not isinstance(messages, (list, tuple)) or len(messages) < 2:
        raise ValueError(f"{where}: expected a list of at least two chat turns, got {messages!r:.80}")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not last.get("content"):
        raise ValueError(f"{where}: the last turn must be a non-empty assistant answer, got {last!r:.80}")


def truncate_middle(ids: list[int], budget: int) -> list[int]:
    """Keep the first and last tokens of `ids` within `budget` (half each, the tail gets the odd one)."""
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


def prompt_ids(messages: Sequence[dict], tokenizer, max_length: int | None = None) -> list[int]:
    """Token ids of the prompt turns with the generation header (what generation starts from)."""
    ids = _ids(tokenizer, list(messages), add_generation_prompt=True)
    return truncate_middle(ids, max_length) if max_length else ids


def tokenize_example(messages: Sequence[dict], tokenizer, max_length: int, where: str = "row") -> dict | None:
    """Return ``{"input_ids", "labels", "truncated"}``, or None when the answer alone exceeds max_length.

    Raises:
        ValueError: the row has no final assistant turn, or the template breaks the prefix property.
    """
    check_messages(messages, where)
    prompt = _ids(tokenizer, list(messages[:-1]), add_generation_prompt=True)
    full = _ids(tokenizer, list(messages), add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise ValueError(
            f"{where}: the chat template does not render the prompt (with generation prompt) as a prefix of "
            "the full conversation; assistant-only labels cannot be placed exactly with this template"
        )
    answer = full[len(prompt):]
    if not answer:
        raise ValueError(f"{where}: the assistant answer tokenised to nothing")
    if len(answer) >= max_length:
        return None
    truncated = len(full) > max_length
    prompt = truncate_middle(prompt, max_length - len(answer))
    return {
        "input_ids": prompt + answer,
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
        "truncated": truncated,
    }


@dataclass
class TokenizeReport:
    """What tokenisation changed: rows whose prompt was cut, rows dropped because the answer didn't fit."""

    truncated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"truncated": len(self.truncated), "dropped": len(self.dropped),
                "truncated_ids": self.truncated[:50], "dropped_ids": self.dropped[:50]}


def tokenize_dataset(dataset: Dataset, tokenizer, max_length: int, keep: Sequence[str] = (),
                     name: str = "dataset") -> tuple[Dataset, TokenizeReport]:
    """Tokenise a split into columns ``id, input_ids, labels, sample_index`` (+ `keep` columns).

    `sample_index` is the row's position in the *input* split, so per-sample tables (AW) can be looked up
    even after rows are dropped.
    """
    if len(dataset) == 0:
        raise ValueError(f"{name}: the split is empty")
    for column in ("id", "messages"):
        if column not in dataset.column_names:
            raise ValueError(f"{name}: missing column {column!r} (have {dataset.column_names})")
    report = TokenizeReport()
    rows = []
    for i, row in enumerate(dataset):
        out = tokenize_example(row["messages"], tokenizer, max_length, where=f"{name} row {i} (id {row['id']})")
        if out is None:
            report.dropped.append(row["id"])
            continue
        if out.pop("truncated"):
            report.truncated.append(row["id"])
        rows.append({"id": row["id"], "sample_index": i, **out, **{k: row[k] for k in keep}})
    if report.truncated or report.dropped:
        logger.warning("%s: %d prompts cut to max_length=%d, %d rows dropped (answer longer than max_length)",
                       name, len(report.truncated), max_length, len(report.dropped))
    if not rows:
        raise ValueError(f"{name}: every row was dropped: answers are longer than max_length={max_length}")
    return Dataset.from_list(rows), report
