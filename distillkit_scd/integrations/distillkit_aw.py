"""Static Adaptive Weighting for DistillKit runs, as in the paper (section 6): AW^(j) of every train sample is
computed once, before distillation, from the SFT student (the config's `model:`) and each teacher
checkpoint p(j) (the schedule's manifest; without a schedule, the config's teacher alone), and
`scd_aw_kl` reads the active checkpoint's column by sample.

`distillkit-scd aw-table CONFIG` (`distillkit_aw_table.build_table`) writes the table (our `AWTable` format, `teachers/aw_table.py`) from the rows
exactly as the trainer will see them (same loading, shuffling, labels and `max_length` cut). DistillKit
rows carry no id, and TRL's collator passes only token columns, so a sample is identified by the sha256 of
its token ids: `AWRowCollator` wraps the trainer's collator and adds, on the CPU before the batch moves to
the device, the table row of every position's sample (packed rows: per packed sample), so the loss looks
AW up without a host sync. Identical token sequences share one row (their AW is identical anyway).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from distillkit_scd.config import RecipeError

logger = logging.getLogger(__name__)

AW_ROWS = "distillkit_scd_aw_rows"
"""Batch key the wrapped collator adds: (B, T) long, the AW table row of each position's sample (-1: padding)."""


def sample_key(ids) -> str:
    """Identity of a training sample: sha256 of its token ids (as int64), hex."""
    return hashlib.sha256(torch.as_tensor(list(ids), dtype=torch.int64).numpy().tobytes()).hexdigest()


def expected_checkpoints(run_config, pool) -> list[str]:
    """The AW table's columns: the manifest's checkpoint folders, or the config's teacher alone."""
    if pool is not None:
        return [str(Path(pool.path(j)).resolve()) for j in range(pool.num_checkpoints)]
    path = Path(run_config.teacher.path)
    return [str(path.resolve()) if path.exists() else run_config.teacher.path]


def check_table(path: Path, pool, run_config, source: str):
    """Load the AW table `scd_aw_kl` will read and check its columns are this run's checkpoints.

    Raises:
        RecipeError: missing/unreadable table, or one computed for other checkpoints, naming the file.
    """
    from distillkit_scd.teachers.aw_table import AWTable

    where = f"{source}: distillkit_scd.aw.table"
    file = path / "aw_table.json" if path.is_dir() or not path.suffix else path
    if not file.is_file():
        raise RecipeError(f"{where}: {file} not found; write it with `distillkit-scd aw-table {source}` "
                          "(static AW, the paper's), or set distillkit_scd.aw.source: online")
    try:
        table = AWTable.load(file)
    except ValueError as err:
        raise RecipeError(f"{where}: {err}") from None
    want = expected_checkpoints(run_config, pool)
    got = table.metadata.get("checkpoints")
    if got != want:
        raise RecipeError(f"{where}: {file} was computed for checkpoints {got}, this run uses {want}; re-run "
                          f"`distillkit-scd aw-table {source}`")
    return table


class AWRowCollator:
    """Wraps a collator; adds `AW_ROWS` (B, T) from the sample key of each row or packed sample.

    Raises (when called):
        ValueError: a sample the table has no row for (table from other data, labels or sequence_length).
    """

    def __init__(self, collator, rows_by_key: dict[str, int]):
        self.collator = collator
        self.rows_by_key = rows_by_key

    def _row(self, ids) -> int:
        key = sample_key(ids)
        if key not in self.rows_by_key:
            raise ValueError("distillkit_scd.aw.table: a training sample is not in the AW table (computed on other "
                             "data, labels or sequence_length?); re-run `distillkit-scd aw-table CONFIG`")
        return self.rows_by_key[key]

    def __call__(self, examples):
        batch = self.collator(examples)
        ids, labels = batch["input_ids"], batch["labels"]  # (B, T), on the CPU here
        rows = torch.full_like(ids, -1)
        pos = batch.get("position_ids")
        for b in range(ids.shape[0]):
            if pos is not None:  # padding-free packing: a sample starts where its position restarts at 0
                starts = (pos[b] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
            else:  # TRL pads on the right
                n = int(batch["attention_mask"][b].sum()) if "attention_mask" in batch else ids.shape[1]
                starts = [0, n]
            for s, e in zip(starts[:-1], starts[1:]):
                if bool((labels[b, s:e] != -100).any()):  # padding and label-free samples need no AW
                    rows[b, s:e] = self._row(ids[b, s:e].tolist())
        batch[AW_ROWS] = rows
        return batch


def rows_by_key(table) -> dict[str, int]:
    """Sample key → table row."""
    return {key: i for i, key in enumerate(table.ids)}

