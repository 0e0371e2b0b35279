"""Assistant-only labels for DistillKit datasets, tokenised before DistillKit's trainer sees them.

DistillKit renders `messages` / `conversations` rows into one chat-template string and drops the
columns (`distillkit/main.py`, `_format_row`), so TRL puts the loss on every token, system and user
turns included, and TRL's `assistant_only_loss` cannot help (the text is no longer conversational and
most templates lack `{% generation %}` markers). Prompt/completion rows it refuses outright.

Through our entry point (`distillkit_scd.labels: assistant`, the default) each such row becomes
`input_ids` + `assistant_masks` (1 = the token carries a label): for every assistant turn k the
conversation up to turn k is rendered with the generation prompt (P_k) and up to and including turn k
without (E_k); the tokens E_k[len(P_k):] up to and including the turn's end-of-turn token
(`formatting.end_of_turn_ids`, as our pipeline labels) are labelled. Each P_k must be a prefix of E_k and E_k of the full conversation (checked per row). For
prompt/completion rows the completion is labelled (chat template for conversational rows; for strings
`prompt`, then `prompt + completion + eos`, as TRL does). TRL treats the rows as already tokenised, cuts
them at `max_length` (DistillKit's `sequence_length`) from the right, packs them if asked, and its
collator sets the labels of unmasked tokens to -100. `labels: all` keeps DistillKit's whole-sequence
behaviour (prompt/completion rows then carry labels on every token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
"""`conversations` (from/value) role names → chat roles, the mapping DistillKit applies."""


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys"):  # transformers 5 may return a BatchEncoding
        out = out["input_ids"]
    return list(out)


def conversation_messages(conversations: Sequence[dict]) -> list[dict]:
    """`[{"from": "human", "value": ...}, ...]` → chat messages; turns with unknown roles are dropped (as
    DistillKit does)."""
    out = []
    for turn in conversations:
        role = _ROLES.get(turn.get("from", ""))
        if role:
            out.append({"role": role, "content": turn.get("value", "")})
    return out


def assistant_mask(messages: Sequence[dict], tokenizer, where: str = "row") -> tuple[list[int], list[int]]:
    """(input_ids, mask) of a whole conversation, mask 1 on the tokens of every assistant turn.

    Raises:
        ValueError: no assistant turn, or a chat template whose renderings are not prefixes of each other
            (then assistant tokens cannot be located exactly; `labels: all` trains on every token).
    """
    from distillkit_scd.data.formatting import end_of_turn_ids

    messages = list(messages)
    stops = end_of_turn_ids(tokenizer)
    full = _ids(tokenizer, messages, add_generation_prompt=False)
    mask = [0] * len(full)
    turns = [k for k, m in enumerate(messages) if m.get("role") == "assistant"]
    if not turns:
        raise ValueError(f"{where}: no assistant turn to put labels on (set distillkit_scd.labels: all to train "
                         "on every token)")
    for k in turns:
        prompt = _ids(tokenizer, messages[:k], add_generation_prompt=True) if k else []
        upto = _ids(tokenizer, messages[:k + 1], add_generation_prompt=False)
        if upto[:len(prompt)] != prompt or full[:len(upto)] != upto:
            raise ValueError(f"{where}: the chat template does not render turn {k} as a prefix of the conversation, "
                             "so its assistant tokens cannot be located exactly (set distillkit_scd.labels: all "
                             "to train on every token)")
        end = len(upto)
        stop = next((i for i in range(len(prompt), end) if upto[i] in stops), None)
        if stop is not None:  # the turn ends at its end-of-turn token (a template's newline after it is not labelled)
            end = stop + 1
        mask[len(prompt):end] = [1] * (end - len(prompt))
    return full, mask


def completion_mask(prompt, completion, tokenizer, where: str = "row") -> tuple[list[int], list[int]]:
    """(input_ids, mask) of a prompt/completion row, mask 1 on the completion's tokens."""
    if isinstance(prompt, list):
        prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True)
        full = _ids(tokenizer, list(prompt) + list(completion), add_generation_prompt=False)
    else:
        text = prompt + completion
        if tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
            text += tokenizer.eos_token
        prompt_ids, full = tokenizer(prompt)["input_ids"], tokenizer(text)["input_ids"]
    if full[:len(prompt_ids)] != prompt_ids:
        raise ValueError(f"{where}: the prompt does not tokenise to a prefix of prompt + completion, so the "
                         "completion cannot be located exactly (set distillkit_scd.labels: all)")
    return full, [0] * len(prompt_ids) + [1] * (len(full) - len(prompt_ids))


def format_row(example: dict, tokenizer, labels: str = "assistant", fallback=None) -> dict:
    """`datasets.map` body replacing DistillKit's `_format_row`: → `{"input_ids", "assistant_masks"}`.

    With `labels == "all"`, `messages` / `conversations` rows go to `fallback` (DistillKit's own
    `_format_row`) and prompt/completion rows are labelled on every token.
    """
    if "prompt" in example and "completion" in example:
        ids, mask = completion_mask(example["prompt"], example["completion"], tokenizer)
        return {"input_ids": ids, "assistant_masks": mask if labels == "assistant" else [1] * len(ids)}
    if labels == "all" and fallback is not None:
        return fallback(example, tokenizer)
    if "messages" in example:
        messages = example["messages"]
    elif "conversations" in example:
        messages = conversation_messages(example["conversations"])
    else:
        raise ValueError("dataset rows: expected `messages`, `conversations`, `prompt` + `completion`, `text` "
                         f"or `input_ids` columns, got {sorted(example)}")
    ids, mask = assistant_mask(messages, tokenizer)
    return {"input_ids": ids, "assistant_masks": mask}


@contextlib.contextmanager
def patched_data(labels: str):
    """Inside this block DistillKit's `load_data` formats rows with `format_row` (restored after)."""
    import distillkit.main as dk_main

    original = dk_main._format_row

    def _format_row(example, tokenizer):
        return format_row(example, tokenizer, labels=labels, fallback=original)

    dk_main._format_row = _format_row
    try:
        yield
    finally:
        dk_main._format_row = original


def prepared_path_for(run_config, labels: str) -> None:
    """DistillKit caches formatted datasets under `dataset.prepared_dataset_path`, keyed only by dataset path,
    seed and sample count: ours go to a subfolder so the two formats never overwrite each other."""
    import os

    ds = run_config.dataset
    if ds.prepared_dataset_path and labels == "assistant":
        ds.prepared_dataset_path = os.path.join(ds.prepared_dataset_path, "distillkit_scd-assistant")


def load_rows(run_config, labels: str):
    """(tokenizer, train rows, eval rows or None) as TRL will see them: each row's `input_ids` cut at the
    run's max_length and `labels` (-100 where no loss). What `aw-table` and `distillkit-teacher` use, so
    they see exactly the training data (DistillKit's loading, shuffling and sample counts).

    Raises:
        ValueError: rows without assistant turns, prompt-prefix failures (as `format_row`).
    """
    import distillkit.main as dk_main

    prepared_path_for(run_config, labels)
    tokenizer = dk_main.load_tokenizer(run_config)
    with patched_data(labels):
        splits = dk_main.load_data(run_config.dataset, tokenizer)
    max_length = run_config.training_args.get("max_length", run_config.sequence_length)
    eos = tokenizer.eos_token or ""

    def encode(row):  # `text` rows (labels: all, or a text dataset): every token, EOS appended as TRL does
        text = row["text"] if row["text"].endswith(eos) else row["text"] + eos
        return {"input_ids": tokenizer(text)["input_ids"]}

    def to_labels(row, has_mask):
        ids = row["input_ids"][:max_length]
        mask = row["assistant_masks"][:max_length] if has_mask else [1] * len(ids)
        return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]}

    out = []
    for split in splits:
        if split is not None:
            if "input_ids" not in split.column_names:
                split = split.map(encode, remove_columns=split.column_names)
            cols = split.column_names
            split = split.map(to_labels, fn_kwargs={"has_mask": "assistant_masks" in cols},
                              remove_columns=[c for c in cols if c != "input_ids"])
        out.append(split)
    return tokenizer, out[0], out[1]
