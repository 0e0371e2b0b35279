"""Batched greedy generation: left padding changes nothing, outputs are deterministic and in input order,
sampling defaults of a model are overridden, and completions stop at the end-of-turn token."""

import pytest
import torch

from distillkit_scd.evaluation.generation import generate, stop_token_ids

SYSTEM = {"role": "system", "content": "Reply with the answer only."}
QUESTIONS = ["Which code is assigned to fever?", "What is (3 + 4) mod 10?", "Hi",
             "Reverse the letters: a b c d e f g h", "Which option is a drug?\nA. aspirin\nB. fever\nC. cough",
             "発熱はありますか？"]


def prompts():
    return [[SYSTEM, {"role": "user", "content": q}] for q in QUESTIONS]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_pair):
    from distillkit_scd.models.loading import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model(str(tiny_pair[1])), load_tokenizer(str(tiny_pair[1]))


def test_batched_equals_one_by_one(model_and_tokenizer):
    """Left-padded batches (sorted by length, restored to input order) give each prompt's unbatched output."""
    model, tok = model_and_tokenizer
    batched = generate(model, tok, prompts(), max_new_tokens=12, batch_size=4, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=12, batch_size=1, progress=False)[0] for p in prompts()]
    assert batched == single
    assert any(batched), "the random tiny model should emit some text within 12 tokens"


def test_deterministic_and_greedy_despite_sampling_defaults(model_and_tokenizer):
    """Two calls agree, and a generation_config asking for sampling is overridden (greedy is forced)."""
    model, tok = model_and_tokenizer
    first = generate(model, tok, prompts(), max_new_tokens=10, batch_size=3, progress=False)
    saved = model.generation_config.do_sample, model.generation_config.temperature
    model.generation_config.do_sample, model.generation_config.temperature = True, 5.0
    try:
        torch.manual_seed(123)
        second = generate(model, tok, prompts(), max_new_tokens=10, batch_size=2, progress=False)
    finally:
        model.generation_config.do_sample, model.generation_config.temperature = saved
    assert first == second
    assert not model.training


def _with_bias(model, token_id):
    """A copy of the model whose next token is always `token_id` (lm_head with a dominant bias)."""
    import copy

    m = copy.deepcopy(model)
    old = m.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token_id] = 1e4
    m.lm_head = head
    return m


def test_stops_at_end_of_turn_and_respects_budget(model_and_tokenizer):
    """A model that always emits <|eot_id|> yields "" (stop token not decoded); one that always emits a
    plain token yields exactly max_new_tokens of it."""
    model, tok = model_and_tokenizer
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot in stop_token_ids(tok, model)
    out = generate(_with_bias(model, eot), tok, prompts()[:3], max_new_tokens=7, batch_size=2, progress=False)
    assert out == ["", "", ""]
    plain = tok.encode("x", add_special_tokens=False)[0]
    out = generate(_with_bias(model, plain), tok, prompts()[:2], max_new_tokens=5, batch_size=2, progress=False)
    assert out == [tok.decode([plain] * 5)] * 2


def test_rejects_prompts_with_answer_and_bad_sizes(model_and_tokenizer):
    """A prompt ending in the assistant's answer (leak) or a zero budget is a ValueError."""
    model, tok = model_and_tokenizer
    with pytest.raises(ValueError, match="prompt 1"):
        generate(model, tok, [prompts()[0], [*prompts()[1], {"role": "assistant", "content": "A"}]], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, prompts(), 0)
