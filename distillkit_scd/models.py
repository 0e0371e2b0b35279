"""Loading teacher/student models and tokenizers, vocabulary checks, and tiny models built on the spot.

Tiny models make every test and the quickstart run without downloading weights: a byte-level BPE
tokenizer is trained in a second on a built-in corpus, and two Llama models of different sizes share it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"]

# A Llama-3-style template: every turn ends with <|eot_id|>, which is also the eos token, so the
# assistant's labels end exactly where generation must stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

TINY_SHAPES = {
    # Teacher wider and deeper than the student, so it learns the harder synthetic families better.
    "teacher": {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4},
    "student": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
}


def _tokenizer_corpus() -> list[str]:
    from distillkit_scd.tasks.synthetic import corpus_for_tokenizer

    english = [
        "Is the answer yes, no or maybe? The study suggests a moderate effect in patients.",
        "Question: Which option is correct? Options: A. B. C. D. E. Answer with one letter.",
    ]
    japanese = [
        "与えられた医学に関する質問と選択肢から、最も適切な回答を選択してください。",
        "質問: 発熱と嘔気があります。選択肢: A. B. C. D.",
        "['発熱', '嘔気']",
    ]
    return corpus_for_tokenizer() + english * 20 + japanese * 20


def build_tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = 1000):
    """Train a byte-level BPE tokenizer on the spot (about a second) with a Llama-3-like chat template.

    Byte-level BPE covers any UTF-8 text, so the same tokenizer also works on the Japanese JMED data.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts if texts is not None else _tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(tokenizer, role: str = "student", seed: int = 0):
    """A randomly initialised `LlamaForCausalLM` of the tiny `role` shape, sized to the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if role not in TINY_SHAPES:
        raise ValueError(f"role: expected one of {sorted(TINY_SHAPES)}, got {role!r}")
    shape = TINY_SHAPES[role]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def make_tiny_pair(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny teacher and student (safetensors) sharing one tokenizer; returns their folders.

    Deterministic by seed. Existing folders are reused, so a pipeline can call this on every start.
    """
    out = Path(out_dir)
    dirs = (out / "teacher", out / "student")
    if all((d / "config.json").is_file() and (d / "tokenizer.json").is_file() for d in dirs):
        return dirs
    tokenizer = build_tiny_tokenizer()
    for role, folder in zip(("teacher", "student"), dirs):
        model = build_tiny_llama(tokenizer, role=role, seed=seed)
        if (folder / "config.json").is_file():
            continue
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.replace(folder)  # atomic: a killed run never leaves a half-written model folder
    return dirs


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """Load a tokenizer that has a chat template and a pad token (left/right padding set by callers)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(f"{path}: cannot load a tokenizer ({err})") from None
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{path}: the tokenizer has no chat template; set one (tokenizer.chat_template)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", trust_remote_code: bool = False, attn_implementation=None):
    """Load a causal LM from a local folder or Hub id, from safetensors only (never pickle)."""
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype], **kwargs)
    except TypeError:  # transformers 4.x names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=_DTYPES[dtype], **kwargs)
    except OSError as err:
        raise ValueError(f"{path}: cannot load a safetensors model ({err})") from None
    return model


def check_vocab_compatible(teacher_tokenizer, student_tokenizer, teacher_config=None, student_config=None,
                           teacher_name: str = "teacher", student_name: str = "student") -> None:
    """Token-level distillation needs one vocabulary: same token → id map and special tokens.

    Raises:
        ValueError: naming both models and the first difference found.
    """
    tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if tv != sv:
        only_t = sorted(set(tv) - set(sv))[:3]
        only_s = sorted(set(sv) - set(tv))[:3]
        moved = sorted(k for k in set(tv) & set(sv) if tv[k] != sv[k])[:3]
        raise ValueError(
            f"{teacher_name} and {student_name} tokenizers differ ({len(tv)} vs {len(sv)} tokens; "
            f"only in teacher: {only_t}, only in student: {only_s}, different ids: {moved}); "
            "token-level distillation needs the same vocabulary"
        )
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(teacher_tokenizer, attr) != getattr(student_tokenizer, attr):
            raise ValueError(f"{teacher_name} and {student_name} tokenizers disagree on {attr}")
    for name, cfg in ((teacher_name, teacher_config), (student_name, student_config)):
        if cfg is not None and cfg.vocab_size < len(tv):
            raise ValueError(
                f"{name}: model vocab_size {cfg.vocab_size} is smaller than the tokenizer's {len(tv)} tokens"
            )
