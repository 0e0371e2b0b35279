"""Tiny model builders, loading, and the vocabulary check."""

from __future__ import annotations

import json

import pytest
import torch

from distillkit_scd.models.loading import (
    EOT,
    build_tiny_tokenizer,
    check_vocab_compatible,
    load_model,
    load_tokenizer,
    make_tiny_pair,
)

CONVERSATION = [
    {"role": "system", "content": "Reply with the answer only."},
    {"role": "user", "content": "発熱と嘔気?\n\nWhat is (3 + 4) mod 10?"},
    {"role": "assistant", "content": "7"},
]


def _ids(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_tiny_pair_shapes_and_shared_tokenizer(tiny_pair):
    """Teacher is wider and deeper than the student; both folders hold safetensors and one tokenizer."""
    teacher_dir, student_dir = tiny_pair
    for d in tiny_pair:
        assert (d / "model.safetensors").is_file()
        assert not list(d.glob("*.bin")), "no pickle weights"
    t_cfg = json.loads((teacher_dir / "config.json").read_text())
    s_cfg = json.loads((student_dir / "config.json").read_text())
    assert t_cfg["hidden_size"] > s_cfg["hidden_size"]
    assert t_cfg["num_hidden_layers"] > s_cfg["num_hidden_layers"]
    assert (teacher_dir / "tokenizer.json").read_bytes() == (student_dir / "tokenizer.json").read_bytes()
    teacher, student = load_model(str(teacher_dir)), load_model(str(student_dir))
    assert teacher.num_parameters() > 3 * student.num_parameters()
    tok_t, tok_s = load_tokenizer(str(teacher_dir)), load_tokenizer(str(student_dir))
    check_vocab_compatible(tok_t, tok_s, teacher.config, student.config)  # must not raise


def test_make_tiny_pair_deterministic(tmp_path, tiny_pair):
    """Same seed → byte-identical weights and tokenizer; another seed → different weights."""
    again = make_tiny_pair(tmp_path / "a", seed=0)
    other = make_tiny_pair(tmp_path / "b", seed=1)
    for ref, new in zip(tiny_pair, again):
        assert (ref / "model.safetensors").read_bytes() == (new / "model.safetensors").read_bytes()
        assert (ref / "tokenizer.json").read_bytes() == (new / "tokenizer.json").read_bytes()
    assert (tiny_pair[0] / "model.safetensors").read_bytes() != (other[0] / "model.safetensors").read_bytes()


def test_make_tiny_pair_leaves_global_rng_alone(tmp_path):
    """Building models does not reseed the caller's torch RNG."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    from distillkit_scd.models.loading import build_tiny_llama

    build_tiny_llama(build_tiny_tokenizer(["abc def"] * 5, vocab_size=300), "student", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_specials_and_template(tiny_tokenizer):
    """eos = <|eot_id|> ends every turn; the generation prompt is a prefix of the full conversation."""
    tok = tiny_tokenizer
    assert tok.eos_token == EOT and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nReply with the answer only.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n発熱と嘔気?\n\nWhat is (3 + 4) mod 10?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n7<|eot_id|>"
    )
    prompt = _ids(tok.apply_chat_template(CONVERSATION[:-1], tokenize=True, add_generation_prompt=True))
    full = _ids(tok.apply_chat_template(CONVERSATION, tokenize=True))
    assert full[: len(prompt)] == prompt
    assert tok.decode(full[len(prompt):]) == "7" + EOT
    assert full.count(tok.eos_token_id) == 3


@pytest.mark.parametrize("text", ["発熱と嘔気があります。", "naïve café — 42%", "['発熱', '嘔気']\n\n", "🙂 x"])
def test_tokenizer_roundtrips_any_utf8(tiny_tokenizer, text):
    """Byte-level BPE: encode → decode is the identity on arbitrary UTF-8 (no unknown tokens)."""
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert tiny_tokenizer.decode(ids) == text


def test_prefix_property_with_newline_merges():
    """Even a tokenizer trained on text full of blank lines keeps the prompt a prefix of the conversation.

    (An answer that itself starts with a newline merges with the header's "\n\n", as with Llama 3;
    data/formatting.py detects that and raises.)
    """
    tok = build_tiny_tokenizer(["a\n\nb\n\n\nc ['x']\n\n" * 3, "\n\n\n\n yes no maybe"] * 50, vocab_size=320)
    for answer in ("yes", "['x']", "b\n\n", " maybe"):
        messages = [{"role": "user", "content": "q\n\n"}, {"role": "assistant", "content": answer}]
        prompt = _ids(tok.apply_chat_template(messages[:1], tokenize=True, add_generation_prompt=True))
        full = _ids(tok.apply_chat_template(messages, tokenize=True))
        assert full[: len(prompt)] == prompt, answer
        assert tok.decode(full[len(prompt):]) == answer + EOT


def test_load_tokenizer_requires_chat_template(tmp_path, tiny_tokenizer):
    """A tokenizer without a chat template is refused with the path in the message."""
    tok = build_tiny_tokenizer(["abc"] * 5, vocab_size=300)
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no chat template") as err:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_load_model_rejects_bad_input(tmp_path, tiny_pair):
    """Unknown dtype and folders without safetensors weights are ValueErrors naming the value/path."""
    with pytest.raises(ValueError, match="float8"):
        load_model(str(tiny_pair[1]), dtype="float8")
    (tmp_path / "config.json").write_text((tiny_pair[1] / "config.json").read_text())
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_model(str(tmp_path))


def test_load_model_dtype(tiny_pair):
    """dtype selects the parameter dtype on both transformers stacks."""
    assert next(load_model(str(tiny_pair[1]), dtype="bfloat16").parameters()).dtype == torch.bfloat16


def test_vocab_mismatch_names_both_models(tiny_tokenizer, tmp_path):
    """Different vocabularies → ValueError naming both paths."""
    other = build_tiny_tokenizer(["completely different corpus 12345"] * 20, vocab_size=300)
    other.save_pretrained(tmp_path)
    other = load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="different tokenizer vocabularies") as err:
        check_vocab_compatible(tiny_tokenizer, other)
    assert tiny_tokenizer.name_or_path in str(err.value) and str(tmp_path) in str(err.value)


def test_special_token_and_model_size_mismatch(tiny_pair, caplog):
    """Same vocabulary but another eos token, or a model smaller than the tokenizer, is refused;
    a different pad token only warns (padding never reaches a loss)."""
    t = load_tokenizer(str(tiny_pair[0]))
    s = load_tokenizer(str(tiny_pair[1]))
    s.eos_token = "<|end_header_id|>"
    with pytest.raises(ValueError, match="eos_token") as err:
        check_vocab_compatible(t, s)
    assert str(tiny_pair[0]) in str(err.value) and str(tiny_pair[1]) in str(err.value)
    s = load_tokenizer(str(tiny_pair[1]))
    s.pad_token = s.eos_token
    check_vocab_compatible(t, s)
    assert "different pad tokens" in caplog.text
    s = load_tokenizer(str(tiny_pair[1]))
    small = load_model(str(tiny_pair[1])).config
    small.vocab_size = len(s) - 1
    with pytest.raises(ValueError, match="vocab_size"):
        check_vocab_compatible(t, s, student_config=small)


def test_models_that_transform_logits_after_the_head_are_refused():
    """Gemma 2 tanh soft-capping (or Cohere/Granite logit scaling) would make hidden @ lm_head the wrong
    logits: AW/SCD/signal passes refuse such a model naming the field; a plain Llama passes."""
    from types import SimpleNamespace

    from transformers import Gemma2Config, Gemma2ForCausalLM

    from distillkit_scd.models.label_forward import label_hidden
    from distillkit_scd.models.loading import check_plain_lm_head

    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[-100, 2, 3]])}
    with pytest.raises(ValueError, match=r"Gemma2ForCausalLM: config.final_logit_softcapping = 30.0"):
        label_hidden(gemma, batch)
    with pytest.raises(ValueError, match="teacher: config.logit_scale = 0.0625"):
        check_plain_lm_head(SimpleNamespace(config=SimpleNamespace(logit_scale=0.0625)), "teacher")
    check_plain_lm_head(SimpleNamespace(config=SimpleNamespace(logit_scale=1.0, final_logit_softcapping=None)), "x")
