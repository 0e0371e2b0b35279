"""Deterministic prompts: a chat template that writes today's date (Llama-3.x's `strftime_now`) renders the
recipe's pinned `task.date_string` instead, in training rows and generation prompts alike."""

import copy
import datetime

import pytest

from distillkit_scd.data.formatting import pin_template_date, prompt_ids, tokenize_example

# A Llama-3.2-style header: today's date unless the caller passes `date_string`.
TEMPLATE = (
    "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
    "<|begin_of_text|>system\nToday Date: {{ date_string }}\n"
    "{%- for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{%- endfor %}"
    "{%- if add_generation_prompt %}assistant: {%- endif %}"
)
MESSAGES = [{"role": "user", "content": "fever"}, {"role": "assistant", "content": "K17"}]


@pytest.fixture()
def dated_tokenizer(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = TEMPLATE
    return tok


def test_unpinned_template_writes_today(dated_tokenizer):
    """The fixture really calls strftime_now: without a pin the header holds today's date."""
    text = dated_tokenizer.decode(prompt_ids(MESSAGES[:1], dated_tokenizer))
    assert datetime.date.today().strftime("%d %b %Y").replace(" ", "") in text.replace(" ", "")


def test_pinned_date_in_prompts_and_training_rows(dated_tokenizer):
    """Pinned: generation prompts and training rows carry the pinned date, not today's; the labels (the
    answer) are unchanged by the pin."""
    unpinned = tokenize_example(MESSAGES, dated_tokenizer, 512)
    pin_template_date(dated_tokenizer, "26 Jul 2024")
    prompt = dated_tokenizer.decode(prompt_ids(MESSAGES[:1], dated_tokenizer)).replace(" ", "")
    today = datetime.date.today().strftime("%d %b %Y").replace(" ", "")
    assert "26Jul2024" in prompt and (today == "26Jul2024" or today not in prompt)
    row = tokenize_example(MESSAGES, dated_tokenizer, 512)
    assert "26Jul2024" in dated_tokenizer.decode(row["input_ids"]).replace(" ", "")
    answer = [t for t in row["labels"] if t != -100]
    assert answer == [t for t in unpinned["labels"] if t != -100]


def test_recipe_date_is_validated_and_reaches_the_workspace_tokenizer(tmp_path, tiny_pair):
    """`task.date_string` must look like a template date; the workspace's tokenizer carries it."""
    from distillkit_scd.config import RecipeError, recipe_from_dict
    from distillkit_scd.data.formatting import TEMPLATE_KWARGS
    from distillkit_scd.pipeline.workspace import Workspace

    base = {"name": "d", "output_dir": str(tmp_path),
            "models": {"teacher": str(tiny_pair[0]), "student": str(tiny_pair[1])}}
    with pytest.raises(RecipeError, match="task.date_string"):
        recipe_from_dict({**base, "task": {"name": "synthetic", "date_string": "2024-07-26"}})
    recipe = recipe_from_dict({**base, "task": {"name": "synthetic", "date_string": "01 Jan 2025"}})
    assert recipe_from_dict({**base, "task": {"name": "synthetic"}}).task.date_string == "26 Jul 2024"
    assert getattr(Workspace(recipe).tokenizer(), TEMPLATE_KWARGS) == {"date_string": "01 Jan 2025"}
