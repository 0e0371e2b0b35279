"""Forward passes that only look at label positions: hidden states there, and log-probs in chunks.

Shared by the AW table (per-sample sequence CE) and SCD's probe cache (per-token distributions), so
neither ever builds (B, T, V) logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from distillkit_scd.losses import label_positions
from distillkit_scd.models.loading import check_plain_lm_head
from distillkit_scd.utils.distributed import unwrap

_BATCH_KEYS = ("input_ids", "attention_mask", "position_ids")


@torch.no_grad()
def label_hidden(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final hidden states at positions that predict a label: (N, H), their flat indices and targets."""
    model = unwrap(model)
    check_plain_lm_head(model, type(model).__name__)
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in _BATCH_KEYS if k in batch}
    labels = batch["labels"].to(device)
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    idx, targets = label_positions(labels)
    return hidden.reshape(-1, hidden.shape[-1])[idx], idx, targets


@torch.no_grad()
def iter_label_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor,
                        chunk_size: int = 1024) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield (rows, log-probs (c, V) float32, targets (c,)) chunk by chunk over `label_hidden` rows."""
    head = unwrap(model).get_output_embeddings()
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, min(start + chunk_size, hidden.shape[0]))
        logits = head(hidden[rows])
        yield rows, F.log_softmax(logits.float(), dim=-1), targets[rows]


@torch.no_grad()
def sequence_losses(model, batch: dict, chunk_size: int = 1024) -> torch.Tensor:
    """Per-sample CE summed over response tokens: L(y) = −Σ_s log p(y_s | y_<s), shape (B,), float64."""
    labels = batch["labels"]
    batch_size, length = labels.shape
    hidden, idx, targets = label_hidden(model, batch)
    sample_of_row = torch.div(idx, length, rounding_mode="floor").cpu()
    out = torch.zeros(batch_size, dtype=torch.float64)
    for rows, logprobs, chunk_targets in iter_label_logprobs(model, hidden, targets, chunk_size):
        nll = -logprobs.gather(1, chunk_targets.unsqueeze(1)).squeeze(1).double().cpu()
        out.index_add_(0, sample_of_row[rows], nll)
    return out
