"""Rows → token ids with the model's chat template, labels on the assistant's tokens only.

The prompt is tokenised with the generation prompt, the full conversation without; the prompt must be
a prefix of the full ids (true for Llama-3 and ChatML templates, checked for every row). What follows
it, the answer up to and including its end-of-turn token (`end_of_turn_ids`), is labelled, and the
sequence ends there: whatever a template writes after that token (ChatML's newline after `<|im_end|>`)
is no part of the answer, and generation stops at the end-of-turn token before it. Too-long rows are
cut in the *middle of the prompt* (keeping the instructions at the start and the question/generation
header at the end), at character boundaries: with byte-level tokenizers one character (Japanese: three
bytes) can span several tokens, and the cut moves past them rather than leave half a character. The
answer is never cut: a row whose answer alone does not fit is dropped, and both are counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from datasets import Dataset

from distillkit_scd.data.collate import IGNORE_INDEX

logger = logging.getLogger(__name__)


TEMPLATE_KWARGS = "distillkit_scd_template_kwargs"
"""Tokenizer attribute holding extra chat-template variables (set by `pin_template_date`)."""


def pin_template_date(tokenizer, date_string: str):
    """Render this tokenizer's chat template with a fixed `date_string` from now on; returns the tokenizer.

    Llama-3.x templates write a date into the system header — today's (`strftime_now`) unless the
    template variable `date_string` is given — so without a pin prompts change from day to day, and a
    Llama-3.1 teacher (whose template falls back to "26 Jul 2024") and a 3.2 student see different headers.
    """
    setattr(tokenizer, TEMPLATE_KWARGS, {"date_string": date_string})
    return tokenizer


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                        **getattr(tokenizer, TEMPLATE_KWARGS, {}))
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


END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
"""Tokens that end a turn in common chat templates (Llama-3, ChatML, Gemma, Phi-3)."""

_REPLACEMENT = "\ufffd"  # what decoding a partial UTF-8 character gives
_MAX_CHAR_TOKENS = 8  # a character is at most 4 bytes, so a cut never needs to move further than this


def end_of_turn_ids(tokenizer) -> set[int]:
    """Ids that end an assistant turn: the tokenizer's eos and the `END_OF_TURN_TOKENS` it has."""
    ids = {tokenizer.eos_token_id}
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return {i for i in ids if i is not None}


def truncate_middle(ids: list[int], budget: int, tokenizer=None) -> list[int]:
    """Keep the first and last tokens of `ids` within `budget` (half each, the tail gets the odd one).

    With `tokenizer`, both cut points move to character boundaries: the head gives up the tokens of a
    character it would keep only partly, the tail skips those it would start inside; the result may then
    be a few tokens shorter than `budget`.
    """
    if len(ids) <= budget:
        return ids
    head = budget // 2
    tail = len(ids) - (budget - head)
    if tokenizer is not None:
        for _ in range(_MAX_CHAR_TOKENS):  # a head that ends inside a character decodes to a trailing U+FFFD
            if head == 0 or not tokenizer.decode(ids[max(0, head - 4):head]).endswith(_REPLACEMENT):
                break
            head -= 1
        for _ in range(_MAX_CHAR_TOKENS):  # a tail that starts inside one decodes to a leading U+FFFD
            if tail == len(ids) or not tokenizer.decode(ids[tail:tail + 4]).startswith(_REPLACEMENT):
                break
            tail += 1
    return ids[:head] + ids[tail:]


def prompt_ids(messages: Sequence[dict], tokenizer, max_length: int | None = None) -> list[int]:
    """Token ids of the prompt turns with the generation header (what generation starts from)."""
    ids = _ids(tokenizer, list(messages), add_generation_prompt=True)
    return truncate_middle(ids, max_length, tokenizer) if max_length else ids


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
    stops = end_of_turn_ids(tokenizer)
    end = next((i for i, t in enumerate(answer) if t in stops), None)
    if end is not None:  # the turn ends at its end-of-turn token; a template's trailing newline is not the answer
        answer = answer[: end + 1]
    if not answer:
        raise ValueError(f"{where}: the assistant answer tokenised to nothing")
    if len(answer) >= max_length:
        return None
    truncated = len(prompt) + len(answer) > max_length
    prompt = truncate_middle(prompt, max_length - len(answer), tokenizer)
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
        """``{"truncated": n, "dropped": n, "ids": {"truncated": [...], "dropped": [...]}}`` (JSON-able)."""
        return {"truncated": len(self.truncated), "dropped": len(self.dropped),
                "ids": {"truncated": list(self.truncated), "dropped": list(self.dropped)}}


def _encode_batch(batch: dict, indices: list[int], tokenizer, max_length: int, name: str) -> dict:
    """`datasets.map` body: tokenise each row; a dropped row gets empty ids and ``status = "dropped"``."""
    out = {"input_ids": [], "labels": [], "sample_index": list(indices), "status": []}
    for i, rid, messages in zip(indices, batch["id"], batch["messages"]):
        enc = tokenize_example(messages, tokenizer, max_length, where=f"{name} row {i} (id {rid})")
        out["input_ids"].append(enc["input_ids"] if enc else [])
        out["labels"].append(enc["labels"] if enc else [])
        out["status"].append("dropped" if enc is None else "truncated" if enc["truncated"] else "ok")
    return out


def tokenize_dataset(dataset: Dataset, tokenizer, max_length: int, num_proc: int = 1, keep: Sequence[str] = (),
                     name: str = "dataset") -> tuple[Dataset, TokenizeReport]:
    """Tokenise a split into columns ``id, input_ids, labels, sample_index`` (+ `keep` columns).

    `sample_index` is the row's position in the *input* split, so per-sample tables (AW) can be looked up
    even after rows are dropped. Prompts longer than the budget are cut in the middle and counted;
    rows whose answer alone does not fit are dropped and counted (see the module docstring).

    Args:
        num_proc: worker processes for `datasets.map` (1 tokenises in this process).
        keep: extra input columns to carry over (e.g. "answer", "tag").
    Returns: (tokenised dataset, report); ``report.as_dict()`` gives counts and ids.
    Raises:
        ValueError: empty split, missing columns, a malformed row, or every row dropped.
    """
    if len(dataset) == 0:
        raise ValueError(f"{name}: the split is empty")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"{name}: max_length: expected an integer >= 2, got {max_length!r}")
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"{name}: num_proc: expected a positive integer, got {num_proc!r}")
    for column in ("id", "messages", *keep):
        if column not in dataset.column_names:
            raise ValueError(f"{name}: missing column {column!r} (have {dataset.column_names})")
    encoded = dataset.map(
        _encode_batch, batched=True, with_indices=True, num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "name": name},
        remove_columns=[c for c in dataset.column_names if c not in ("id", *keep)],
        load_from_cache_file=False, desc=f"tokenize {name}",
    )
    status = encoded["status"]
    ids = encoded["id"]
    report = TokenizeReport(truncated=[r for r, s in zip(ids, status) if s == "truncated"],
                            dropped=[r for r, s in zip(ids, status) if s == "dropped"])
    if report.truncated or report.dropped:
        logger.warning("%s: %d prompts cut to max_length=%d, %d rows dropped (answer longer than max_length)",
                       name, len(report.truncated), max_length, len(report.dropped))
    if len(report.dropped) == len(encoded):
        raise ValueError(f"{name}: every row was dropped: answers are longer than max_length={max_length}")
    if report.dropped:
        encoded = encoded.filter(lambda s: s != "dropped", input_columns="status", load_from_cache_file=False)
    encoded = encoded.remove_columns("status")
    return encoded.select_columns(["id", "input_ids", "labels", "sample_index", *keep]), report
