"""Batched greedy generation with left padding and the model's chat template.

Prompts are sorted by length (longest first, so an out-of-memory shows up in the first batch) to pad
little, then the outputs are put back in input order. Greedy decoding (`do_sample=False`, one beam) is
forced whatever the model's own generation_config says (Llama-3-Instruct ships sampling defaults), so
outputs are deterministic. Generation stops at end-of-turn (the tokenizer's eos and the end-of-turn
tokens its vocabulary has, as training labels end) and any eos ids of the model's generation_config. Works with transformers 4.57 and 5.x (only keyword
arguments both accept are passed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch.utils.data import BatchSampler
from tqdm.auto import tqdm

from distillkit_scd.data.formatting import prompt_ids
from distillkit_scd.utils.progress import progress_bars

logger = logging.getLogger(__name__)

EOT_TOKEN = "<|eot_id|>"


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a completion: the end-of-turn ids training labels end with (tokenizer eos,
    `<|eot_id|>`, `<|im_end|>`, …: `formatting.end_of_turn_ids`) and the model's generation eos ids."""
    from distillkit_scd.data.formatting import end_of_turn_ids

    ids = set(end_of_turn_ids(tokenizer))
    if EOT_TOKEN in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids(EOT_TOKEN))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return sorted(i for i in ids if i is not None)


def _check_prompts(messages_list: Sequence[Sequence[dict]]) -> None:
    for i, messages in enumerate(messages_list):
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") == "assistant":
            raise ValueError(f"generate: prompt {i} must be a non-empty list of chat turns that does not end "
                             "with the assistant's answer (pass messages[:-1] of a task row)")


@torch.no_grad()
def generate(model, tokenizer, messages_list: Sequence[Sequence[dict]], max_new_tokens: int, batch_size: int = 16,
             progress: bool = True, max_prompt_length: int | None = None, shard=None) -> list[str]:
    """Greedy completions for chat prompts.

    Args:
        messages_list: one list of chat turns (system/user) per example, without the answer; rendered
            with the tokenizer's chat template and `add_generation_prompt=True`.
        max_new_tokens: generation budget per example.
        batch_size: prompts per `model.generate` call (left padded).
        progress: show a tqdm bar over batches (on a terminal only, see `progress.progress_bars`).
        max_prompt_length: prompts longer than this are cut in the middle (as in training).
        shard (`sharding.Shard`, *optional*): under a data-parallel launch, this process generates every
            world-th batch of the list one process would build and the completions are gathered, so each
            completion equals the single-process one.
    Returns:
        The completions decoded without special tokens, in input order.
    Raises:
        ValueError: batch_size or max_new_tokens below 1, or a prompt that ends with an assistant turn.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"generate: batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    _check_prompts(messages_list)
    encoded = [prompt_ids(m, tokenizer, max_prompt_length) for m in messages_list]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # stable: ties keep input order
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    was_training = model.training
    model.eval()
    outputs: dict[int, str] = {}
    batches = list(BatchSampler(order, batch_size, drop_last=False))  # [order[0:b], order[b:2b], ...]
    if shard is not None:
        batches = shard.take(batches)
    try:
        for batch in tqdm(batches, desc="generate", disable=not (progress and progress_bars()), leave=False):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, width)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends at the last column
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            # Sampling knobs set to None so a model's sampling defaults neither apply nor warn.
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=pad, temperature=None, top_p=None, top_k=None)
            for row, i in enumerate(batch):  # (B, width + new); tokens after a stop are pad → skipped
                outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    if shard is not None:
        outputs = shard.gather_dict(outputs)
    return [outputs[i] for i in range(len(encoded))]
