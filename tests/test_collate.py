"""The collator builds the one batch both models see; padding must never reach a loss."""

import pytest
import torch

from distillkit_scd.data.collate import IGNORE_INDEX, DistillationCollator


def test_right_padding_masks_and_positions():
    """Padding is on the right, masked out of attention and labels; positions count from 0."""
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8], "labels": [8]},
    ]
    batch = DistillationCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]


def test_pad_to_multiple_and_aw_columns():
    """pad_to_multiple_of rounds the width up; `aw` (B, N) and `sample_index` pass through."""
    rows = [
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "aw": [0.2, 0.7], "sample_index": 4},
        {"input_ids": [1], "labels": [1], "aw": [0.5, 0.1], "sample_index": 9},
    ]
    batch = DistillationCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["aw"].dtype == torch.float32
    torch.testing.assert_close(batch["aw"], torch.tensor([[0.2, 0.7], [0.5, 0.1]]))
    assert batch["sample_index"].tolist() == [4, 9]


def test_mismatched_labels_name_the_row():
    """A row whose labels and input_ids differ in length is refused with its id."""
    with pytest.raises(ValueError, match="row 'q7'"):
        DistillationCollator(pad_token_id=0)([{"id": "q7", "input_ids": [1, 2], "labels": [1]}])
