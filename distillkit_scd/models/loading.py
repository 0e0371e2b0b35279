"""Loading teacher/student models and tokenizers, vocabulary checks, and tiny models built on the spot.

Tiny models make every test and the quickstart run without downloading weights: a byte-level BPE
tokenizer is trained in a second on a built-in corpus, and two Llama models of different sizes share it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BOS, START_HEADER, END_HEADER, EOT, PAD = (
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>",
)
SPECIAL_TOKENS = [BOS, START_HEADER, END_HEADER, EOT, PAD]

# A Llama-3-style template: every turn ends with <|eot_id|>, which is also the eos token, so the
# assistant's labels end exactly where generation must stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Pre-tokenisation split in the style of Llama 3: runs of newlines are their own piece (`\s*[\r\n]+`), so
# the "\n\n" that ends the generation header tokenises the same whether or not an answer follows. This
# keeps the prompt ids a prefix of the full conversation ids, which assistant-only labels rely on.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

TINY_SHAPES = {
    # Teacher wider and deeper than the student, so it learns the harder synthetic families better.
    "teacher": {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4},
    "student": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
}
TINY_MAX_POSITIONS = 1024


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
    Special tokens: bos `<|begin_of_text|>`, eos `<|eot_id|>` (ends every turn), pad `<|pad|>`.

    Args:
        texts: training corpus; defaults to synthetic-task text plus English and Japanese samples.
        vocab_size: upper bound on the vocabulary (a small corpus may stop earlier).
    Returns: a `PreTrainedTokenizerFast` with `chat_template` set.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size: expected at least {256 + len(SPECIAL_TOKENS)} (all bytes + special "
                         f"tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
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
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        additional_special_tokens=[START_HEADER, END_HEADER],
        model_max_length=TINY_MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(tokenizer, role: str = "student", seed: int = 0):
    """A randomly initialised `LlamaForCausalLM` of the tiny `role` shape, sized to the tokenizer.

    The global torch RNG is left untouched (initialisation runs inside `torch.random.fork_rng`).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if role not in TINY_SHAPES:
        raise ValueError(f"role: expected one of {sorted(TINY_SHAPES)}, got {role!r}")
    shape = TINY_SHAPES[role]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=TINY_MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def make_tiny_pair(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny teacher and student (safetensors) sharing one tokenizer; returns their folders.

    Deterministic by seed (same seed → identical tokenizer and weights). Folders that already hold a
    model are reused, so a pipeline can call this on every start; each folder is written to a temporary
    sibling and renamed, so a killed run never leaves a half-written model.
    """
    out = Path(out_dir)
    dirs = (out / "teacher", out / "student")
    done = [(d / "config.json").is_file() and (d / "tokenizer.json").is_file() for d in dirs]
    if all(done):
        return dirs
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    for role, folder, exists in zip(("teacher", "student"), dirs, done):
        if exists:
            continue
        model = build_tiny_llama(tokenizer, role=role, seed=seed)
        tmp = folder.with_name(folder.name + ".tmp")
        for stale in (tmp, folder):  # leftovers of a killed run
            if stale.exists():
                shutil.rmtree(stale)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.replace(folder)
        logger.info("tiny %s: %d parameters saved to %s", role, model.num_parameters(), folder)
    return dirs


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """Load a tokenizer that has a chat template; a missing pad token becomes the eos token.

    Raises:
        ValueError: the tokenizer cannot be loaded or has no chat template.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as err:  # no tokenizer files: the error type varies by version
        raise ValueError(f"{path}: cannot load a tokenizer ({err})") from None
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{path}: the tokenizer has no chat template; use an instruct/chat model or set "
                         "tokenizer.chat_template and save it")
    probe = [{"role": "user", "content": "x"}]
    try:
        with_prompt = tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        without = tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
    except Exception as err:  # a template error is the template's, whatever its type
        raise ValueError(f"{path}: the chat template fails to render a user turn ({err})") from None
    if with_prompt == without:
        raise ValueError(f"{path}: the chat template ignores add_generation_prompt; generation and "
                         "assistant-only labels need a template that opens the assistant turn")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", trust_remote_code: bool = False, attn_implementation=None):
    """Load a causal LM from a local folder or Hub id, from safetensors only (never pickle).

    A local folder's safetensors headers are read first, so a truncated, garbage or missing weights file
    is named in the error instead of surfacing as a bare safetensors traceback.

    Raises:
        ValueError: unknown dtype, or no loadable safetensors model at `path` (naming the folder or file).
    """
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    if Path(path).is_dir():
        from distillkit_scd.models.checkpoints import checkpoint_files

        checkpoint_files(path)  # ValueError naming the folder (no weights) or the unreadable file
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        # `dtype=` is understood by transformers >= 4.56 (both pinned stacks); `torch_dtype` is deprecated.
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=_DTYPES[dtype], **kwargs)
    except OSError as err:
        raise ValueError(f"{path}: cannot load a safetensors model ({err})") from None
    except Exception as err:
        if type(err).__module__.startswith("safetensors"):  # e.g. a Hub download cut short
            raise ValueError(f"{path}: cannot read its safetensors weights ({err})") from None
        raise


# Config fields that transform the logits after the lm_head matmul (Gemma 2/3: tanh soft-capping; Cohere:
# logit_scale; Granite: logits_scaling), with the value at which they do nothing.
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


def check_plain_lm_head(model, name: str) -> None:
    """Our label-position paths (chunked losses, AW, SCD, teacher signals) compute logits as
    ``hidden @ lm_head.T (+ bias)``; a model that transforms its logits after that would be distilled on the
    wrong distribution, so it is refused here rather than trained silently.

    Raises:
        ValueError: naming the model and the config field.
    """
    config = getattr(model, "config", None)
    for field, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(config, field, neutral)
        if value is not None and value != neutral:
            raise ValueError(f"{name}: config.{field} = {value!r} transforms the logits after the lm_head; "
                             "distillkit-scd computes logits as hidden @ lm_head and does not support it yet "
                             f"(expected {field} = {neutral!r}, e.g. a Llama/Qwen/Mistral model)")


def _special_tokens(tokenizer) -> dict[str, str | None]:
    named = {attr: getattr(tokenizer, attr, None) for attr in ("bos_token", "eos_token", "pad_token", "unk_token")}
    others = {str(v) for v in named.values() if v is not None}
    named["additional"] = ",".join(sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", [])
                                          if str(t) not in others))
    return {k: (None if v is None else str(v)) for k, v in named.items()}


def check_vocab_compatible(teacher_tokenizer, student_tokenizer, teacher_config=None, student_config=None,
                           teacher_name: str | None = None, student_name: str | None = None) -> None:
    """Token-level distillation needs one vocabulary: the same token → id map and the same special tokens,
    and model embedding tables at least as large as the tokenizer.

    Names default to the tokenizers' `name_or_path` (their folder or Hub id).

    Raises:
        ValueError: naming both models and the first difference found.
    """
    t_name = teacher_name or getattr(teacher_tokenizer, "name_or_path", "") or "teacher"
    s_name = student_name or getattr(student_tokenizer, "name_or_path", "") or "student"
    tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if tv != sv:
        only_t = sorted(set(tv) - set(sv))[:3]
        only_s = sorted(set(sv) - set(tv))[:3]
        moved = sorted(k for k in set(tv) & set(sv) if tv[k] != sv[k])[:3]
        raise ValueError(
            f"teacher {t_name} and student {s_name} have different tokenizer vocabularies ({len(tv)} vs "
            f"{len(sv)} tokens; only in teacher: {only_t}, only in student: {only_s}, different ids: {moved}); "
            "token-level distillation needs the same vocabulary: pick models of one family"
        )
    ts, ss = _special_tokens(teacher_tokenizer), _special_tokens(student_tokenizer)
    for key in ts:
        if ts[key] == ss[key]:
            continue
        if key == "pad_token":  # padding is masked out of every loss, so only the student's pad is used
            logger.warning("teacher %s and student %s use different pad tokens (%r vs %r); the student's is used",
                           t_name, s_name, ts[key], ss[key])
            continue
        raise ValueError(f"teacher {t_name} and student {s_name} tokenizers disagree on the special token "
                         f"{key}: {ts[key]!r} vs {ss[key]!r}")
    for role, name, cfg in (("teacher", t_name, teacher_config), ("student", s_name, student_config)):
        size = getattr(cfg, "vocab_size", None) if cfg is not None else None
        if size is not None and size < len(teacher_tokenizer):
            raise ValueError(f"{role} {name}: model vocab_size {size} is smaller than the tokenizer's "
                             f"{len(teacher_tokenizer)} tokens (teacher {t_name}, student {s_name})")
