"""The Adaptive-Weighting table (paper section 6): per-sample L_S, L_T^(j) and AW^(j) = L_S/(L_S+L_T^(j)).

One forward pass of the student SFT model and of every teacher checkpoint over the train split (the
checkpoints are swapped into one teacher module in place). The table is cached on disk under a key made
of the content hashes of the models and the tokenised data, reused by every run that needs it, and
recomputed when any input changes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from distillkit_scd import hashing
from distillkit_scd.losses import adaptive_weight
from distillkit_scd.model_outputs import sequence_losses

logger = logging.getLogger(__name__)

TABLE_JSON = "aw_table.json"


@dataclass
class AWTable:
    """ids (S,), student_loss (S,), teacher_loss (S, N), weights (S, N) float64; `key` = cache key."""

    ids: list[str]
    student_loss: torch.Tensor
    teacher_loss: torch.Tensor
    key: str = ""

    @property
    def weights(self) -> torch.Tensor:
        return adaptive_weight(self.student_loss.unsqueeze(1), self.teacher_loss)

    def column(self, j: int) -> torch.Tensor:
        return self.weights[:, j]

    def weights_for(self, ids) -> torch.Tensor:
        """Rows of `weights` for these sample ids; refuses ids the table was not computed on."""
        index = {i: n for n, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise ValueError(f"AW table has no rows for ids {missing[:5]} (of {len(missing)}); it was computed on "
                             "different data — delete the aw/ folder or re-run the aw-table stage")
        return self.weights[[index[i] for i in ids]]

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        data = {"key": self.key, "ids": self.ids, "student_loss": self.student_loss.tolist(),
                "teacher_loss": self.teacher_loss.tolist(), "weights": self.weights.tolist()}
        path = folder / TABLE_JSON
        tmp = folder / (TABLE_JSON + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> AWTable:
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["ids"], torch.tensor(data["student_loss"], dtype=torch.float64),
                       torch.tensor(data["teacher_loss"], dtype=torch.float64), data.get("key", ""))
        except (FileNotFoundError, json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path}: not a readable AW table ({err})") from None


def _losses_over(model, batches, desc: str) -> torch.Tensor:
    model.eval()
    return torch.cat([sequence_losses(model, b) for b in tqdm(batches, desc=desc, leave=False)])


def compute_aw_table(student, teacher, pool, dataset, collator, batch_size: int = 16) -> AWTable:
    """Per-sample sequence CE of the student and of each checkpoint (loaded into `teacher` in place)."""
    batches = [collator([dataset[i] for i in range(s, min(s + batch_size, len(dataset)))])
               for s in range(0, len(dataset), batch_size)]
    student_loss = _losses_over(student, batches, "AW: student")
    columns = []
    for j in range(pool.num_checkpoints):
        pool.load_into(teacher, j)
        columns.append(_losses_over(teacher, batches, f"AW: teacher checkpoint {j}"))
    return AWTable(list(dataset["id"]), student_loss, torch.stack(columns, dim=1))


def aw_cache_key(student_dir, checkpoint_dirs, dataset) -> str:
    parts = [hashing.folder_hash(student_dir)] + [hashing.folder_hash(d) for d in checkpoint_dirs]
    parts.append(hashing.data_hash(dataset["id"], dataset["input_ids"], dataset["labels"]))
    return hashing.combine(*parts)


def run_aw_table(recipe) -> Path:
    """Stage: build (or reuse) the AW table for the recipe's train split → `OUT/aw/aw_table.json`."""
    from distillkit_scd.collate import DistillationCollator
    from distillkit_scd.models import load_model
    from distillkit_scd.teachers import CheckpointPool, read_manifest
    from distillkit_scd.workspace import Workspace

    ws = Workspace(recipe)
    tokenizer = ws.tokenizer()
    train, _ = ws.tokenized_splits(tokenizer)
    pool = CheckpointPool(ws.sft_dir("teacher"))
    student_entries, student_best, _ = read_manifest(ws.sft_dir("student"))
    student_dir = student_entries[student_best].path
    key = aw_cache_key(student_dir, [pool.path(j) for j in range(pool.num_checkpoints)], train)
    path = ws.aw_dir() / TABLE_JSON
    if path.is_file():
        cached = AWTable.load(path)
        if cached.key == key:
            logger.info("AW table: inputs unchanged, reusing %s", path)
            return path
        logger.info("AW table: inputs changed (models or data), recomputing")
    m = recipe.models
    student = load_model(student_dir, m.dtype, m.trust_remote_code)
    teacher = load_model(str(pool.path(pool.best_index)), m.dtype, m.trust_remote_code)
    pool.active_index = pool.best_index
    table = compute_aw_table(student, teacher, pool, train, DistillationCollator(tokenizer.pad_token_id),
                             batch_size=recipe.evaluation.batch_size)
    table.key = key
    w = table.weights
    logger.info("AW table: %d samples × %d checkpoints; mean AW per checkpoint %s", w.shape[0], w.shape[1],
                [round(x, 3) for x in w.mean(0).tolist()])
    return table.save(ws.aw_dir())
