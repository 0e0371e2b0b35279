"""Teacher-signal cache: each teacher checkpoint runs once over the train split, for every method.

Table 1 needs five distillation runs per task over the same N checkpoints; with an online teacher each
run pays a teacher forward per micro-batch. The cache stores, per checkpoint and per label position of
every train row, the teacher's top-k log-probs and token ids (`losses.TopKSignal`); distillation then
reads signals instead of running the teacher, so the teacher runs N times per task in total.

The approximation (stated, measured in benchmarks/RESULTS.md): the teacher distribution is replaced by
its top-k tokens plus the remaining mass m spread uniformly over the other V − k tokens. Forward KL, reverse
KL and TAID's p_t are then computed exactly on that distribution; TAID interpolates the student's logits
with the cached log-probs (a per-row constant shift of the teacher logits does not change p_t). With k = V
the cache is exact. The tail mass is stored as its exact log (a logsumexp of the dropped entries, not
1 − Σ top-k, which cancels when the top k hold almost everything). Values are stored in float32, ids in
int32: 8·k + 4 bytes per label token per checkpoint.

Layout: `OUT/signals/checkpoint-<j>.safetensors` with `logprobs` (T_total, k), `indices` (T_total, k),
`tail_logmass` (T_total,), `seq_loss` (S,) and `offsets` (S + 1,) — the row with `sample_index` i has its label positions at `offsets[i]:offsets[i+1]`,
in position order, which is the order `losses.label_positions` produces for a batch; `signals.json` holds
the cache key.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from distillkit_scd.losses import TopKSignal, topk_signal
from distillkit_scd.models.label_forward import iter_label_logprobs, label_hidden
from distillkit_scd.utils import hashing
from distillkit_scd.utils.atomic import atomic_write, atomic_write_json
from distillkit_scd.utils.progress import ProgressLog

logger = logging.getLogger(__name__)

META = "signals.json"


class SignalCache:
    """Cached top-k teacher signals for one checkpoint, addressable by train-row index."""

    def __init__(self, logprobs: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                 tail_logmass: torch.Tensor | None = None, seq_loss: torch.Tensor | None = None):
        self.logprobs = logprobs
        self.indices = indices
        self.offsets = offsets
        self.tail_logmass = tail_logmass  # None in caches written before it was stored: m = 1 − Σ top-k
        self.seq_loss = seq_loss  # (S,) float64 teacher sequence CE L_T by sample_index (the AW table's)

    @classmethod
    def load(cls, path: Path) -> SignalCache:
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except Exception as err:  # safetensors' own error types for corrupt or missing files
            raise ValueError(f"{path}: cannot read the teacher-signal cache ({err})") from None
        return cls(data["logprobs"], data["indices"], data["offsets"], data.get("tail_logmass"), data.get("seq_loss"))

    def for_rows(self, sample_indices: torch.Tensor, device=None) -> TopKSignal:
        """Signals of these rows' (by `sample_index`) label positions, concatenated in batch order — the
        order of `losses.label_positions` on the batch."""
        parts = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in sample_indices.tolist()]
        lp = torch.cat([self.logprobs[p] for p in parts])
        idx = torch.cat([self.indices[p] for p in parts])
        tail = None if self.tail_logmass is None else torch.cat([self.tail_logmass[p] for p in parts]).to(device)
        return TopKSignal(lp.to(device), idx.to(device), tail)


@torch.no_grad()
def build_checkpoint_signals(teacher, dataset, collator, top_k: int, batch_size: int = 16,
                             chunk_size: int = 1024, desc: str = "signals") -> SignalCache:
    """One teacher pass over `dataset` → top-k log-probs at every label position, row by row, and each
    row's teacher sequence loss L_T = −Σ log p(y_s) over its label positions (exact, before the top-k cut:
    the AW table reads it from here instead of running the teacher again)."""
    teacher.eval()
    values, ids, tails = [], [], []
    sample_index = list(dataset["sample_index"])
    if sample_index != sorted(sample_index):
        raise ValueError("build_checkpoint_signals: rows must be in increasing sample_index order")
    counts = torch.zeros(sample_index[-1] + 1 if sample_index else 0, dtype=torch.long)
    seq_loss = torch.zeros(len(counts), dtype=torch.float64)
    batches = list(DataLoader(dataset, batch_size=batch_size, collate_fn=collator))  # in row order
    progress = ProgressLog(desc, len(batches), log=logger)
    for batch in batches:
        hidden, flat_idx, targets = label_hidden(teacher, batch)
        length = batch["labels"].shape[1]
        rows = torch.div(flat_idx, length, rounding_mode="floor").cpu()
        per_row = torch.bincount(rows, minlength=batch["labels"].shape[0])
        counts[batch["sample_index"]] = per_row  # dropped rows keep 0 positions
        batch_loss = torch.zeros(batch["labels"].shape[0], dtype=torch.float64)
        for chunk, logprobs, chunk_targets in iter_label_logprobs(teacher, hidden, targets, chunk_size):
            nll = -logprobs.gather(1, chunk_targets.unsqueeze(1)).squeeze(1).double().cpu()
            batch_loss.index_add_(0, rows[chunk], nll)
            signal = topk_signal(logprobs, top_k)  # log_softmax of log-probs is the identity
            values.append(signal.logprobs.float().cpu())
            ids.append(signal.indices.cpu())
            tails.append(signal.tail_logmass.float().cpu())
        seq_loss[batch["sample_index"]] = batch_loss
        progress.update()
    offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return SignalCache(torch.cat(values), torch.cat(ids), offsets, torch.cat(tails), seq_loss)


def cache_key(checkpoint_dirs, dataset, top_k: int) -> str:
    parts = [hashing.folder_hash(d) for d in checkpoint_dirs]
    parts.append(hashing.data_hash(dataset["id"], dataset["input_ids"], dataset["labels"]))
    return hashing.combine(*parts, f"top_k={top_k}", "format=3")  # 2: exact tail log-mass; 3: seq_loss


def signal_paths(folder: Path, num_checkpoints: int) -> list[Path]:
    return [folder / f"checkpoint-{j}.safetensors" for j in range(num_checkpoints)]


def run_signal_cache(recipe) -> Path:
    """Stage: build (or reuse) the cache for every teacher checkpoint → `OUT/signals/`."""
    from safetensors.torch import save_file

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.pipeline.workspace import Workspace
    from distillkit_scd.teachers.pool import CheckpointPool

    ws = Workspace(recipe)
    tokenizer = ws.tokenizer()
    train, _ = ws.tokenized_splits(tokenizer)
    pool = CheckpointPool(ws.sft_dir("teacher"))
    k = recipe.distill.cache_top_k
    key = cache_key([pool.path(j) for j in range(pool.num_checkpoints)], train, k)
    folder = ws.root / "signals"
    meta = folder / META
    paths = signal_paths(folder, pool.num_checkpoints)
    if meta.is_file() and json.loads(meta.read_text()).get("key") == key and all(p.is_file() for p in paths):
        logger.info("teacher signals: inputs unchanged, reusing %s", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    m = recipe.models
    teacher = pool.load_model(0, m.dtype, m.trust_remote_code, m.attn_implementation)
    if torch.cuda.is_available():
        teacher = teacher.to("cuda")
    collator = DistillationCollator(tokenizer.pad_token_id)
    for j, path in enumerate(paths):
        pool.load_into(teacher, j)
        cache = build_checkpoint_signals(teacher, train, collator, k, recipe.evaluation.batch_size,
                                         recipe.distill.chunk_size, desc=f"teacher signals p({j + 1})")
        tensors = {"logprobs": cache.logprobs.contiguous(), "indices": cache.indices.contiguous(),
                   "offsets": cache.offsets, "tail_logmass": cache.tail_logmass.contiguous(),
                   "seq_loss": cache.seq_loss.contiguous()}
        atomic_write(path, lambda tmp, tensors=tensors: save_file(tensors, str(tmp)))
    atomic_write_json(meta, {"key": key, "top_k": k, "num_checkpoints": pool.num_checkpoints, "rows": len(train),
                             "teacher_rows": pool.num_checkpoints * len(train)}, indent=None)
    logger.info("teacher signals: %d checkpoints × %d rows cached (top-%d) in %s", pool.num_checkpoints,
                len(train), k, folder)
    return folder
