"""Padding tokenized rows into training batches.

Teacher and student must see exactly the same ``input_ids``, ``attention_mask`` and ``position_ids``,
so one collator builds all three and both models consume the same batch. Rows are right-padded;
``labels`` are -100 on padding, so padding never contributes to any loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class DistillationCollator:
    """Collate ``{"input_ids", "labels"[, "aw"][, "sample_index"]}`` rows into a padded batch.

    Args:
        pad_token_id (`int`): id written into padded ``input_ids`` positions.
        pad_to_multiple_of (`int`, *optional*, defaults to `None`): round the padded length up, which
            keeps tensor shapes few (fewer kernel variants, steadier memory) on accelerators.

    Returns a dict of tensors: ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long,
    ``labels`` (B, T) long, ``position_ids`` (B, T) long, and, when present in every row, ``aw``
    (B, N) float32 (each sample's adaptive weight for each teacher checkpoint) and ``sample_index``
    (B,) long.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("DistillationCollator received an empty list of rows")
        lengths = [len(row["input_ids"]) for row in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        batch = len(rows)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = lengths[i]
            if len(row["labels"]) != n:
                raise ValueError(
                    f"row {row.get('id', i)!r}: labels has {len(row['labels'])} entries but input_ids has {n}"
                )
            input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
            attention_mask[i, :n] = 1
        # Positions count real tokens only; padding sits at the end so it gets positions past the text,
        # which never influence real tokens under a causal mask.
        position_ids = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(batch, -1).contiguous()
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "position_ids": position_ids,
        }
        if all("aw" in row for row in rows):
            out["aw"] = torch.as_tensor([list(row["aw"]) for row in rows], dtype=torch.float32)
        if all("sample_index" in row for row in rows):
            out["sample_index"] = torch.as_tensor([row["sample_index"] for row in rows], dtype=torch.long)
        return out
