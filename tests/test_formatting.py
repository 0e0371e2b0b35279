"""Chat-template tokenisation: assistant-only labels, exactness, truncation that never loses the answer."""

from __future__ import annotations

import logging

import pytest
from datasets import Dataset

from distillkit_scd.data.formatting import prompt_ids, tokenize_dataset, tokenize_example, truncate_middle
from distillkit_scd.tasks import load_task

IGNORE = -100


def _template_ids(tokenizer, messages, generation_prompt=False) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _labelled(enc) -> list[int]:
    return [t for t in enc["labels"] if t != IGNORE]


def _check_assistant_only(enc, tokenizer, answer: str) -> None:
    """Labels: -100 then exactly the answer tokens + <|eot_id|>, equal to the input ids at those positions."""
    labels, ids = enc["labels"], enc["input_ids"]
    assert len(labels) == len(ids)
    first = next(i for i, t in enumerate(labels) if t != IGNORE)
    assert all(t == IGNORE for t in labels[:first])
    assert labels[first:] == ids[first:]
    assert tokenizer.decode(labels[first:]) == answer + "<|eot_id|>"
    assert labels[-1] == tokenizer.eos_token_id


def test_labels_cover_only_the_answer_and_match_full_template(tiny_tokenizer):
    """Untruncated: input_ids == the template's tokenisation of the whole conversation; labels = answer+eot."""
    rows = load_task("synthetic", num_train=8, num_test=4)["test"]
    for row in rows:
        enc = tokenize_example(row["messages"], tiny_tokenizer, max_length=512)
        assert enc["input_ids"] == _template_ids(tiny_tokenizer, row["messages"])
        assert not enc["truncated"]
        _check_assistant_only(enc, tiny_tokenizer, row["answer"])
        prompt = _template_ids(tiny_tokenizer, row["messages"][:-1], generation_prompt=True)
        assert enc["labels"].count(IGNORE) == len(prompt)


@pytest.mark.parametrize("task", ["pubmedqa", "jmmlu", "crade", "rrtnm", "smdis", "nrner"])
def test_assistant_only_labels_on_real_rows(shared_data, tiny_tokenizer, task):
    """Real English/Japanese rows: decoded labelled tokens == gold answer + <|eot_id|>."""
    rows = load_task(task, str(shared_data), limit_test=3)["test"]
    for row in rows:
        enc = tokenize_example(row["messages"], tiny_tokenizer, max_length=100_000)
        _check_assistant_only(enc, tiny_tokenizer, row["answer"])
        assert enc["input_ids"] == _template_ids(tiny_tokenizer, row["messages"])


def test_truncation_keeps_answer_and_both_prompt_ends(tiny_tokenizer):
    """A too-long prompt is cut in the middle: BOS/system head and generation header tail stay, answer intact."""
    messages = [
        {"role": "system", "content": "Reply with the answer only."},
        {"role": "user", "content": "filler words " * 200 + "Which code is assigned to fever?"},
        {"role": "assistant", "content": "K17"},
    ]
    full = _template_ids(tiny_tokenizer, messages)
    prompt = _template_ids(tiny_tokenizer, messages[:-1], generation_prompt=True)
    answer = full[len(prompt):]
    enc = tokenize_example(messages, tiny_tokenizer, max_length=64)
    assert enc["truncated"] and len(enc["input_ids"]) == 64
    _check_assistant_only(enc, tiny_tokenizer, "K17")
    kept = 64 - len(answer)
    assert enc["input_ids"][: kept // 2] == prompt[: kept // 2]  # BOS + system header survive
    assert enc["input_ids"][kept // 2: kept] == prompt[len(prompt) - (kept - kept // 2):]
    assert enc["input_ids"][0] == tiny_tokenizer.bos_token_id


def test_truncate_middle_reference():
    """Hand-computed cases: odd budgets give the extra token to the tail; short inputs are unchanged."""
    assert truncate_middle([1, 2, 3, 4, 5, 6, 7], 4) == [1, 2, 6, 7]
    assert truncate_middle([1, 2, 3, 4, 5, 6, 7], 3) == [1, 6, 7]
    assert truncate_middle([1, 2, 3], 3) == [1, 2, 3]


def test_answer_too_long_is_dropped(tiny_tokenizer):
    """When the answer alone needs all of max_length (no prompt token left) the row is dropped (None)."""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 50}]
    answer_len = len(_template_ids(tiny_tokenizer, messages)) - len(
        _template_ids(tiny_tokenizer, messages[:1], generation_prompt=True))
    assert tokenize_example(messages, tiny_tokenizer, max_length=answer_len) is None
    kept = tokenize_example(messages, tiny_tokenizer, max_length=answer_len + 1)
    assert kept is not None and len(kept["input_ids"]) == answer_len + 1


def test_tokenize_dataset_counts_truncated_and_dropped(tiny_tokenizer, caplog):
    """The report counts and names cut and dropped rows, and a warning says so; sample_index survives drops."""
    rows = [
        {"id": "short", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "A"}],
         "answer": "A"},
        {"id": "long_prompt", "messages": [{"role": "user", "content": "blah " * 100},
                                           {"role": "assistant", "content": "B"}], "answer": "B"},
        {"id": "long_answer", "messages": [{"role": "user", "content": "hi"},
                                           {"role": "assistant", "content": "blah " * 100}], "answer": "x"},
    ]
    with caplog.at_level(logging.WARNING, logger="distillkit_scd.data.formatting"):
        out, report = tokenize_dataset(Dataset.from_list(rows), tiny_tokenizer, max_length=32, keep=("answer",),
                                       name="train")
    assert report.as_dict() == {"truncated": 1, "dropped": 1,
                                "ids": {"truncated": ["long_prompt"], "dropped": ["long_answer"]}}
    assert "1 prompts cut" in caplog.text and "1 rows dropped" in caplog.text
    assert out.column_names == ["id", "input_ids", "labels", "sample_index", "answer"]
    assert list(out["id"]) == ["short", "long_prompt"] and list(out["sample_index"]) == [0, 1]
    assert all(len(x) <= 32 for x in out["input_ids"])
    assert tiny_tokenizer.decode([t for t in out[1]["labels"] if t != IGNORE]) == "B<|eot_id|>"


def test_tokenize_dataset_num_proc_matches(tiny_tokenizer):
    """Worker processes give the same rows as in-process tokenisation."""
    split = load_task("synthetic", num_train=20, num_test=20)["test"]
    one, _ = tokenize_dataset(split, tiny_tokenizer, 128)
    two, _ = tokenize_dataset(split, tiny_tokenizer, 128, num_proc=2)
    assert one.to_list() == two.to_list()


def test_all_dropped_and_bad_rows_raise(tiny_tokenizer):
    """Every row dropped, a missing final assistant turn, or a bad max_length → ValueError naming it."""
    long = [{"id": "a", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "z " * 40}]}]
    with pytest.raises(ValueError, match="every row was dropped"):
        tokenize_dataset(Dataset.from_list(long), tiny_tokenizer, 8)
    bad = [{"id": "b7", "messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "r"}]}]
    with pytest.raises(ValueError, match="id b7.*assistant"):
        tokenize_dataset(Dataset.from_list(bad), tiny_tokenizer, 64)
    with pytest.raises(ValueError, match="max_length"):
        tokenize_dataset(Dataset.from_list(long), tiny_tokenizer, 0)


def test_template_without_prefix_property_is_refused(tiny_tokenizer):
    """A template that renders the assistant turn differently from the generation prompt cannot be labelled."""
    tok = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(ValueError, match="prefix"):
        tokenize_example(messages, tok, 64)


def test_prompt_ids_match_training_prompt(tiny_tokenizer):
    """Generation starts from exactly the tokens that precede the labels in training (same truncation)."""
    row = load_task("synthetic", num_train=4, num_test=4)["test"][1]
    enc = tokenize_example(row["messages"], tiny_tokenizer, 512)
    assert prompt_ids(row["messages"][:-1], tiny_tokenizer) == enc["input_ids"][: enc["labels"].count(IGNORE)]


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
"""SmolLM2's / Qwen's ChatML template (without the default system turn): a newline follows <|im_end|>."""


def _with_template(tiny_tokenizer, template: str, special=(), eos=None):
    tok = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    if special:
        tok.add_special_tokens({"additional_special_tokens": list(special)})
    if eos:
        tok.eos_token = eos
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template", ["llama3", "chatml", "llama3 + newline"])
def test_labels_stop_at_the_end_of_turn_token(tiny_tokenizer, template):
    """Every template: the labels are the answer and its end-of-turn token, nothing the template writes
    after it (ChatML's newline after <|im_end|>); the sequence ends at that token."""
    if template == "llama3":
        tok, eot = tiny_tokenizer, "<|eot_id|>"
    elif template == "chatml":
        tok, eot = _with_template(tiny_tokenizer, CHATML, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"), "<|im_end|>"
    else:  # the Llama-3 template with a newline after each turn, as some fine-tunes ship it
        tok, eot = _with_template(tiny_tokenizer, tiny_tokenizer.chat_template.replace("<|eot_id|>", "<|eot_id|>\n")
                                  ), "<|eot_id|>"
    messages = [{"role": "user", "content": "Is 7 prime?"}, {"role": "assistant", "content": "yes"}]
    full = _template_ids(tok, messages)
    enc = tokenize_example(messages, tok, max_length=256)
    eot_id = tok.convert_tokens_to_ids(eot)
    assert tok.decode(_labelled(enc)) == "yes" + eot
    assert enc["input_ids"][-1] == eot_id and enc["labels"][-1] == eot_id
    trailing = full[full.index(eot_id, len(full) - 4) + 1:]  # what the template writes after the last eot
    assert enc["input_ids"] == full[: len(full) - len(trailing)]
    if template != "llama3":
        assert tok.decode(trailing) == "\n"  # the case being fixed: this newline used to be labelled


RARE = "齲齧鬱麤"  # characters the tiny tokenizer never saw: three byte tokens each


def test_prompt_cut_keeps_whole_characters(tiny_tokenizer):
    """Japanese text with a byte-level tokenizer: a plain token cut leaves half a character (U+FFFD) at one
    end; the cut used for training and generation never does, and stays within the budget."""
    messages = [{"role": "user", "content": RARE * 40}, {"role": "assistant", "content": "A"}]
    prompt = _template_ids(tiny_tokenizer, messages[:1], generation_prompt=True)
    broken = [b for b in range(20, 60) if "\ufffd" in tiny_tokenizer.decode(truncate_middle(prompt, b))]
    assert broken, "the plain cut never split a character: the test would prove nothing"
    for budget in broken:
        cut = truncate_middle(prompt, budget, tiny_tokenizer)
        assert "\ufffd" not in tiny_tokenizer.decode(cut) and budget - 8 <= len(cut) <= budget
        assert cut[:3] == prompt[:3] and cut[-3:] == prompt[-3:]  # both template ends survive
        enc = tokenize_example(messages, tiny_tokenizer, max_length=budget + 2)
        assert "\ufffd" not in tiny_tokenizer.decode(enc["input_ids"]) and len(enc["input_ids"]) <= budget + 2
        assert prompt_ids(messages[:1], tiny_tokenizer, budget) == cut
