"""The Adaptive-Weighting table (paper section 6): per-sample L_S, L_T^(j) and AW^(j) = L_S/(L_S+L_T^(j)).

L(y) = −Σ_s log p(y_s | y_<s), summed over the response tokens (label positions) of a train sample, for the
student SFT model q_SFT (L_S) and every teacher checkpoint j (L_T^(j)): one forward pass each over the
train split (checkpoints swapped into one teacher module in place). AW near 1: the teacher is better on
the sample (distil more); near 0: the student is (keep CE).

Artifacts (`OUT/aw/`): `aw_table.safetensors` (student_loss (S,), teacher_loss (S, N), weights (S, N),
float64) and `aw_table.json` (ids, cache key, metadata, sha256 of the tensors file). The JSON is written
last, so its presence means a complete table. The key hashes the student's and every checkpoint's
weights+config, the tokenised train split, max_length and dtype; `run_aw_table` reuses a table whose key
matches and recomputes otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader

from distillkit_scd.losses import adaptive_weight
from distillkit_scd.models.label_forward import sequence_losses
from distillkit_scd.utils import hashing
from distillkit_scd.utils.atomic import atomic_write, atomic_write_json
from distillkit_scd.utils.progress import ProgressLog

logger = logging.getLogger(__name__)

TABLE_JSON = "aw_table.json"
TABLE_TENSORS = "aw_table.safetensors"
FORMAT_VERSION = 1


@dataclass
class AWTable:
    """Per-sample sequence losses and adaptive weights over the train split.

    ids (`list[str]`): sample ids, row order.  student_loss (S,) and teacher_loss (S, N): float64 sums of
    CE over label positions.  weights (S, N): AW^(j) = L_S / (L_S + L_T^(j)) (`losses.adaptive_weight`;
    0.5 when both are 0, e.g. a sample without label tokens).  key: cache key.  metadata: free-form JSON.
    """

    ids: list[str]
    student_loss: torch.Tensor
    teacher_loss: torch.Tensor
    key: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        self.student_loss = torch.as_tensor(self.student_loss, dtype=torch.float64)
        self.teacher_loss = torch.as_tensor(self.teacher_loss, dtype=torch.float64)
        s = len(self.ids)
        if self.student_loss.shape != (s,) or self.teacher_loss.ndim != 2 or self.teacher_loss.shape[0] != s:
            raise ValueError(f"AWTable: expected student_loss ({s},) and teacher_loss ({s}, N) for {s} ids, got "
                             f"{tuple(self.student_loss.shape)} and {tuple(self.teacher_loss.shape)}")
        if len(set(self.ids)) != s:
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise ValueError(f"AWTable: sample id {dup!r} appears more than once; ids must be unique")
        self.weights = adaptive_weight(self.student_loss.unsqueeze(1), self.teacher_loss)  # (S, N)
        self._row = {i: n for n, i in enumerate(self.ids)}

    @property
    def num_checkpoints(self) -> int:
        return self.teacher_loss.shape[1]

    def column(self, j: int) -> torch.Tensor:
        """AW^(j) of every sample, (S,)."""
        if not 0 <= j < self.num_checkpoints:
            raise ValueError(f"AW table column: expected 0..{self.num_checkpoints - 1}, got {j}")
        return self.weights[:, j]

    def weights_for(self, ids: Sequence) -> torch.Tensor:
        """Rows of `weights` (len(ids), N) for these sample ids.

        Raises:
            ValueError: ids the table was not computed on (a table from different data is refused).
        """
        missing = [str(i) for i in ids if str(i) not in self._row]
        if missing:
            raise ValueError(f"AW table has no rows for ids {missing[:5]} ({len(missing)} of {len(ids)} missing); "
                             "it was computed on different data — re-run the aw-table stage")
        return self.weights[[self._row[str(i)] for i in ids]]

    # ---- persistence ------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write `aw_table.safetensors` then `aw_table.json` (each atomically); returns the JSON path."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = folder / TABLE_TENSORS
        data = {"student_loss": self.student_loss.contiguous(), "teacher_loss": self.teacher_loss.contiguous(),
                "weights": self.weights.contiguous()}
        atomic_write(tensors, lambda tmp: save_file(data, str(tmp)))
        meta = {"format_version": FORMAT_VERSION, "key": self.key, "num_samples": len(self.ids),
                "num_checkpoints": self.num_checkpoints, "tensors": TABLE_TENSORS,
                "tensors_sha256": hashing.sha256_file(tensors), "metadata": self.metadata, "ids": self.ids}
        path = atomic_write_json(folder / TABLE_JSON, meta, indent=None)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AWTable:
        """Read a table from its JSON path (or its folder).

        Raises:
            ValueError: missing/corrupt files, or a tensors file that is not the one the JSON was written with.
        """
        from safetensors.torch import load_file

        path = Path(path)
        if path.is_dir():
            path = path / TABLE_JSON
        try:
            meta = json.loads(path.read_text())
            tensors = path.parent / meta["tensors"]
            if hashing.sha256_file(tensors) != meta["tensors_sha256"]:
                raise ValueError(f"{tensors}: does not match {path} (sha256 differs); re-run the aw-table stage")
            data = load_file(str(tensors))
            return cls(meta["ids"], data["student_loss"], data["teacher_loss"], meta.get("key", ""),
                       meta.get("metadata", {}))
        except ValueError:
            raise
        except Exception as err:  # OSError, JSON errors, missing keys, safetensors' own errors
            raise ValueError(f"{path}: not a readable AW table ({type(err).__name__}: {err})") from None


# --------------------------------------------------------------------------------------------------
# Computing the table.
# --------------------------------------------------------------------------------------------------


def length_batches(dataset, batch_size: int, collator) -> list[tuple[list[int], dict]]:
    """Batches of rows sorted by length (less padding); each with its row indices."""
    lengths = [len(x) for x in dataset["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    rows = list(BatchSampler(order, batch_size, drop_last=False))  # [order[0:b], order[b:2b], ...]
    return list(zip(rows, DataLoader(dataset, batch_sampler=rows, collate_fn=collator)))


def row_losses(model, batches, num_rows: int, chunk_size: int, shard=None, what: str = "AW table") -> torch.Tensor:
    """Per-row sequence CE (num_rows,) float64 in dataset order, progress logged as lines. With a
    `sharding.Shard`, this process runs every world-th batch and the rows are gathered (the other rows
    are 0 here, so the sum is exact)."""
    was_training = model.training
    model.eval()
    out = torch.zeros(num_rows, dtype=torch.float64)
    try:
        mine = batches if shard is None else shard.take(batches)
        progress = ProgressLog(what, len(mine), log=logger)
        for rows, batch in mine:
            out[rows] = sequence_losses(model, batch, chunk_size).to("cpu", torch.float64)
            progress.update()
    finally:
        model.train(was_training)
    return out if shard is None else shard.sum(out)


def compute_aw_table(student, teachers, dataset, batch_size: int = 16, *, teacher=None, collator=None,
                     chunk_size: int = 1024, teacher_losses: torch.Tensor | None = None, shard=None) -> AWTable:
    """L_S, L_T^(j) and AW^(j) for every row of a tokenised split (columns id, input_ids, labels).

    Args:
        student: the student SFT model.
        teachers: a `teachers.pool.CheckpointPool` (then `teacher` is the module checkpoints are swapped into;
            its previously active checkpoint is restored afterwards), or a sequence of N models.
        dataset: tokenised rows (a `datasets.Dataset` or anything with column access and `[i]` rows).
        batch_size: rows per forward pass (rows are length-sorted; padding never changes a row's loss).
        collator: defaults to `DistillationCollator(pad_token_id=0)` (pad ids are masked out).
        teacher_losses: (S, N) L_T^(j) already computed (the teacher-signal pass yields them): then the
            teachers are not run, only the student.
        shard (`sharding.Shard`, *optional*): split the batches over the launched processes and gather;
            every process returns the whole table, equal to the single-process one.

    Raises:
        ValueError: empty dataset, or a pool without a `teacher` module.
    """
    from distillkit_scd.data.collate import DistillationCollator

    if len(dataset) == 0:
        raise ValueError("compute_aw_table: the dataset has no rows")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    collator = collator or DistillationCollator(pad_token_id=0)
    batches = length_batches(dataset, batch_size, collator)
    n_rows = len(dataset)
    student_loss = row_losses(student, batches, n_rows, chunk_size, shard, "AW table: student")
    columns = []
    if teacher_losses is not None:
        if teacher_losses.shape[0] != n_rows:
            raise ValueError(f"compute_aw_table: teacher_losses has {teacher_losses.shape[0]} rows, the dataset {n_rows}")
        columns = list(torch.as_tensor(teacher_losses, dtype=torch.float64).unbind(1))
    elif hasattr(teachers, "load_into"):
        if teacher is None:
            raise ValueError("compute_aw_table: pass teacher= (the module to swap checkpoints into) with a pool")
        restore = teachers.active_index
        try:
            for j in range(teachers.num_checkpoints):
                teachers.load_into(teacher, j)
                columns.append(row_losses(teacher, batches, n_rows, chunk_size, shard,
                                       f"AW table: teacher checkpoint {j + 1}/{teachers.num_checkpoints}"))
                logger.info("AW: teacher checkpoint %d done", j + 1)  # 1-based
        finally:
            if restore is not None:
                teachers.load_into(teacher, restore)
    else:
        columns = [row_losses(m, batches, n_rows, chunk_size, shard) for m in teachers]
    no_labels = sum(1 for y in dataset["labels"] if all(v == -100 for v in list(y)[1:]))
    if no_labels:
        logger.warning("AW: %d rows have no label tokens (L_S = L_T = 0 → AW = 0.5)", no_labels)
    return AWTable(list(dataset["id"]), student_loss, torch.stack(columns, dim=1))


def aw_cache_key(student_dir, checkpoint_dirs, dataset, max_length: int, dtype: str = "float32") -> str:
    """Content key: student and checkpoint weights+config, the tokenised rows, max_length and dtype."""
    parts = [f"aw-v{FORMAT_VERSION}", f"max_length={max_length}", f"dtype={dtype}", hashing.folder_hash(student_dir)]
    parts += [hashing.folder_hash(d) for d in checkpoint_dirs]
    parts.append(hashing.dataset_hash(dataset))
    return hashing.combine(*parts)


def student_sft_dir(sft_student_dir: Path) -> Path:
    """q_SFT: the student manifest's selected checkpoint (what distillation starts from), else `final/`."""
    from distillkit_scd.models.checkpoints import MANIFEST, best_checkpoint

    if (sft_student_dir / MANIFEST).is_file():
        return best_checkpoint(sft_student_dir)
    final = sft_student_dir / "final"
    if not final.is_dir():
        raise ValueError(f"{sft_student_dir}: no manifest.json and no final/ model; run the student SFT stage first")
    return final


def run_aw_table(recipe) -> Path:
    """Stage: build (or reuse) the AW table of the recipe's train split → `OUT/aw/aw_table.json`."""
    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.pipeline.workspace import Workspace
    from distillkit_scd.teachers.pool import CheckpointPool
    from distillkit_scd.utils.log import is_main_process
    from distillkit_scd.utils.sharding import stage_shard

    ws = Workspace(recipe)
    tokenizer = ws.tokenizer()
    train, _ = ws.tokenized_splits(tokenizer)
    pool = CheckpointPool(ws.sft_dir("teacher"))
    student_dir = student_sft_dir(ws.sft_dir("student"))
    m = recipe.models
    checkpoint_dirs = [pool.path(j) for j in range(pool.num_checkpoints)]
    key = aw_cache_key(student_dir, checkpoint_dirs, train, recipe.task.max_length, m.dtype)
    path = ws.aw_dir() / TABLE_JSON
    if path.is_file():
        try:
            cached = AWTable.load(path)
        except ValueError as err:
            logger.warning("AW table: cached table unreadable (%s); recomputing", err)
        else:
            if cached.key == key:
                logger.info("AW table: inputs unchanged, reusing %s", path)
                return path
            logger.info("AW table: inputs changed (models or data), recomputing")
    shard = stage_shard()  # under a data-parallel launch: this process's batches; the table is gathered
    student = load_model(str(student_dir), m.dtype, m.trust_remote_code, m.attn_implementation).to(shard.device())
    teacher_losses = _signal_teacher_losses(recipe, ws.root, train, pool.num_checkpoints)
    teacher = None
    if teacher_losses is None:
        teacher = pool.load_model(pool.best_index, m.dtype, m.trust_remote_code, m.attn_implementation)
        teacher = teacher.to(shard.device())
    table = compute_aw_table(student, pool, train, batch_size=recipe.evaluation.batch_size, teacher=teacher,
                             collator=DistillationCollator(tokenizer.pad_token_id), chunk_size=recipe.distill.chunk_size,
                             teacher_losses=teacher_losses, shard=shard)
    table.key = key
    table.metadata = {"student": str(student_dir), "checkpoints": [str(d) for d in checkpoint_dirs],
                      "max_length": recipe.task.max_length, "dtype": m.dtype, "task": recipe.task.name,
                      "teacher_losses_from": "signals" if teacher_losses is not None else "teacher passes",
                      "teacher_rows": 0 if teacher_losses is not None else pool.num_checkpoints * len(train)}
    w = table.weights
    logger.info("AW table: %d samples × %d checkpoints; mean AW per checkpoint %s", w.shape[0], w.shape[1],
                [round(x, 3) for x in w.mean(0).tolist()])
    if not is_main_process():
        return path
    return table.save(ws.aw_dir())


def _signal_teacher_losses(recipe, root: Path, train, num_checkpoints: int) -> torch.Tensor | None:
    """(S, N) L_T from the teacher-signal cache when the recipe distils from it (one teacher pass per
    checkpoint serves both), else None (the AW stage runs the teachers itself)."""
    if recipe.distill.teacher_signal != "cached":
        return None
    from distillkit_scd.teachers.signal_cache import SignalCache, signal_paths

    paths = signal_paths(root / "signals", num_checkpoints)
    columns = []
    for path in paths:
        cache = SignalCache.load(path)
        if cache.seq_loss is None:
            raise ValueError(f"{path}: written before teacher sequence losses were cached; re-run the `signals` stage")
        columns.append(cache.seq_loss[torch.as_tensor(list(train["sample_index"]))])
    logger.info("AW table: teacher losses read from %s (no teacher passes)", root / "signals")
    return torch.stack(columns, dim=1)
