"""SCD's checkpoint choice (paper section 5.2), made cheap by caching the teacher side once per run.

    j* = argmin_j  E KL(p_best ‖ p_j) + E KL(q ‖ p_j)

Expectations are means over every label position of a fixed probe subset of the train split (token
weighted), at temperature 1. Term 1 does not depend on the student: computed once. For term 2 the
teachers' probe log-probs are cached per checkpoint on CPU, so each decision costs ONE student forward over
the probe set instead of N teacher passes (plus N cheap KL reductions on CPU).

Cache modes (`distill.scd.top_k`):
- 0: full log-probs (P, V) float32 per checkpoint — exact (equal to N naive teacher passes up to float
  rounding; tested). Memory 4·P·V·N bytes: P = probe label positions; e.g. 64 samples × 100 answer tokens ×
  V = 128,256 × N = 4 ≈ 13 GB, so use top-k for real vocabularies.
- k > 0: top-k log-probs + token ids + a tail bucket (the exact log-mass outside the top k), the tail
  spread uniformly over the other V − k tokens: p̃. Memory (8·k + 4)·P·N bytes. Term 2 is then
  KL(q ‖ p̃_j); its error is exactly
      KL(q ‖ p̃) − KL(q ‖ p) = Σ_{v ∉ top-k} q_v · log(p_v / p̃_v),
  so |error| ≤ q(tail) · max_{v ∉ top-k} |log(p_v / p̃_v)| per position (tested). It vanishes when the
  student puts no mass on the teacher's tail and at k = V. Term 1 uses p̃ on both sides. Measured on the
  tiny models (benchmarks/RESULTS.md, "SCD decision cost"): see the numbers there.
"""

from __future__ import annotations

import logging
import random

import torch
from torch.utils.data import DataLoader, Subset

from distillkit_scd.losses import TopKSignal, topk_signal
from distillkit_scd.models.label_forward import iter_label_logprobs, label_hidden
from distillkit_scd.schedules import select_checkpoint

logger = logging.getLogger(__name__)


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probs (c, V), in float64; 0·log 0 = 0 (entries with p = 0 add nothing)."""
    log_p, log_q = log_p.double(), log_q.double()
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)  # (c,)


def probe_indices(num_rows: int, size: int, seed: int) -> list[int]:
    """The fixed probe subset: `min(size, num_rows)` train row indices drawn by `seed`, sorted."""
    if num_rows < 1:
        raise ValueError(f"probe set: the train split is empty (num_rows={num_rows})")
    if size < 1:
        raise ValueError(f"distill.scd.probe_size: expected an integer >= 1, got {size!r}")
    return sorted(random.Random(seed).sample(range(num_rows), min(size, num_rows)))


def probe_batches(dataset, collator, size: int, seed: int, batch_size: int) -> list[dict]:
    """Collated batches of the probe subset of a tokenized split (rows with input_ids, labels), in row order."""
    subset = Subset(dataset, probe_indices(len(dataset), size, seed))
    return list(DataLoader(subset, batch_size=batch_size, collate_fn=collator))


class SCDSelector:
    """Caches each checkpoint's probe-set distributions once; `select(student)` returns (j*, terms).

    Args:
        pool: `teachers.pool.CheckpointPool` (anything with num_checkpoints, best_index, active_index, load_into).
        teacher: the live teacher module: checkpoints are swapped into it in place while caching, and the
            previously active checkpoint is restored afterwards.
        probe_batches: collated batches of the probe subset (see `probe_batches`), fixed for the run.
        top_k: 0 caches full log-probs (exact); k > 0 top-k + tail bucket (see the module docstring).
        chunk_size: label positions per logits chunk (bounds the (c, V) working memory).

    Attributes after `precompute()`: `cache[j][c]` (chunk c of checkpoint j: (c, V) tensor or
    `losses.TopKSignal` with the exact tail log-mass),
    `kl_best[j]` (term 1), `teacher_passes` (N), `num_positions` (P).
    """

    def __init__(self, pool, teacher, probe_batches: list[dict], top_k: int = 0, chunk_size: int = 1024):
        if top_k < 0:
            raise ValueError(f"distill.scd.top_k: expected an integer >= 0 (0 = full), got {top_k!r}")
        if not probe_batches:
            raise ValueError("SCDSelector: the probe set is empty; check distill.scd.probe_size and the train split")
        self.pool = pool
        self.teacher = teacher
        self.probe_batches = probe_batches
        self.top_k = top_k
        self.chunk_size = chunk_size
        self.cache: list[list] | None = None
        self.kl_best: list[float] | None = None
        self.best_index: int = pool.best_index if pool is not None else 0
        self.teacher_passes = 0
        self.student_passes = 0
        self.num_positions = 0
        self.vocab_size: int | None = None  # V, from the first probe chunk (needed to expand a top-k item)

    # ---- cache ------------------------------------------------------------------------------------

    def _store(self, logprobs: torch.Tensor):
        self.vocab_size = logprobs.shape[-1]
        if self.top_k == 0:
            return logprobs.float().cpu()
        # log_softmax of log-probs is the identity, so the loss path's compressor applies unchanged.
        signal = topk_signal(logprobs, self.top_k)
        return TopKSignal(signal.logprobs.float().cpu(), signal.indices.cpu(), signal.tail_logmass.float().cpu())

    def _dense(self, item, device=None) -> torch.Tensor:
        """(c, V) log-probs of a cached chunk (p̃ for a top-k item), on `device`."""
        if isinstance(item, TopKSignal):
            item = TopKSignal(*(t.to(device) for t in (item.logprobs, item.indices, item.tail_logmass)))
            return item.dense_logprobs(slice(None), self.vocab_size)
        return item if device is None else item.to(device)

    @torch.no_grad()
    def iter_probe_logprobs(self, model):
        """Yield the model's log-probs (c, V) float32 at the probe label positions, chunk by chunk, on the
        model's device (eval mode inside; the previous mode is restored)."""
        was_training = model.training
        model.eval()
        try:
            for batch in self.probe_batches:
                hidden, _, targets = label_hidden(model, batch)
                for _, logprobs, _ in iter_label_logprobs(model, hidden, targets, self.chunk_size):
                    yield logprobs
        finally:
            model.train(was_training)

    def precompute(self) -> None:
        """One teacher pass per checkpoint over the probe set (cached on CPU); then term 1 for every j.

        Streams: only one (c, V) chunk of full log-probs exists at a time in top-k mode.
        """
        restore = self.pool.active_index
        cache = []
        try:
            for j in range(self.pool.num_checkpoints):
                self.pool.load_into(self.teacher, j)
                cache.append([self._store(lp) for lp in self.iter_probe_logprobs(self.teacher)])
                self.teacher_passes += 1
        finally:
            if restore is not None:
                self.pool.load_into(self.teacher, restore)
        self.set_cache(cache, self.pool.best_index)

    def set_cache(self, cache: list[list], best_index: int) -> None:
        """Install a cache (`cache[j][c]`, see class docstring) and compute term 1 from it."""
        if not cache or not 0 <= best_index < len(cache):
            raise ValueError(f"best_index: expected 0..{len(cache) - 1}, got {best_index}")
        shapes = {tuple(len(self._chunk_rows(x)) for x in chunks) for chunks in cache}
        if len(shapes) != 1:
            raise ValueError(f"SCD cache: checkpoints cover different probe positions {sorted(shapes)}")
        self.cache, self.best_index = cache, best_index
        self.num_positions = sum(next(iter(shapes)))
        if self.num_positions == 0:
            raise ValueError("SCD probe set has no label positions (every probe row's labels are -100)")
        best = [self._dense(x) for x in cache[best_index]]
        self.kl_best = [self._mean_kl(best, j) for j in range(len(cache))]
        mib = sum(self._nbytes(x) for chunks in cache for x in chunks) / 2**20
        logger.info("SCD: cached %d checkpoints × %d probe label positions (%s, %.1f MiB on CPU); term 1 "
                    "KL(p_best ‖ p_j) = %s", len(cache), self.num_positions,
                    "full" if self.top_k == 0 else f"top-{self.top_k} + tail", mib,
                    [round(x, 4) for x in self.kl_best])

    @staticmethod
    def _chunk_rows(item) -> torch.Tensor:
        return item.logprobs if isinstance(item, TopKSignal) else item

    @staticmethod
    def _nbytes(item) -> int:
        if isinstance(item, TopKSignal):
            return sum(t.numel() * t.element_size() for t in (item.logprobs, item.indices, item.tail_logmass))
        return item.numel() * item.element_size()

    def _mean_kl(self, log_p_chunks: list[torch.Tensor], j: int) -> float:
        """Mean over probe positions of KL(p ‖ p_j), p given chunk by chunk."""
        if len(log_p_chunks) != len(self.cache[j]):
            raise ValueError(f"SCD: {len(log_p_chunks)} chunks of probe log-probs, the cache has {len(self.cache[j])}")
        total = 0.0
        for log_p, item in zip(log_p_chunks, self.cache[j]):
            total += kl_rows(log_p, self._dense(item, log_p.device)).sum().item()
        return total / self.num_positions

    # ---- decision ---------------------------------------------------------------------------------

    def select(self, student) -> tuple[int, list[dict]]:
        """One student pass over the probe set → (j*, per-checkpoint terms for the schedule log).

        Precomputes the teacher cache on first use (N teacher passes, once per run). The student's
        log-probs are streamed chunk by chunk against every cached checkpoint (on the student's device), so
        only one (c, V) student chunk is alive at a time.
        """
        if self.cache is None:
            self.precompute()
        n = len(self.cache)
        sums = [0.0] * n
        chunks = 0
        for c, log_q in enumerate(self.iter_probe_logprobs(student)):
            if c >= len(self.cache[0]):
                raise ValueError("SCD: the student produced more probe chunks than the cache holds")
            for j in range(n):
                sums[j] += kl_rows(log_q, self._dense(self.cache[j][c], log_q.device)).sum().item()
            chunks += 1
        if chunks != len(self.cache[0]):
            raise ValueError(f"SCD: the student produced {chunks} probe chunks, the cache holds {len(self.cache[0])}")
        self.student_passes += 1
        kl_student = [x / self.num_positions for x in sums]
        return self._decide(kl_student)

    def _decide(self, kl_student: list[float]) -> tuple[int, list[dict]]:
        chosen = select_checkpoint(self.kl_best, kl_student)
        terms = [{"checkpoint": j, "kl_best": self.kl_best[j], "kl_student": kl_student[j],
                  "total": self.kl_best[j] + kl_student[j]} for j in range(len(self.cache))]
        return chosen, terms


def cache_from_signals(signals: list, probe_batches: list[dict], chunk_size: int) -> list[list[TopKSignal]]:
    """The probe cache (`cache[j][c]`, as `SCDSelector.precompute` builds it) read from cached teacher
    signals (`signal_cache.SignalCache` per checkpoint): the probe rows are train rows, so the signals pass
    already holds their top-k distributions and SCD runs no teacher pass of its own. Chunks follow
    `iter_label_logprobs` (label positions of each batch in `label_positions` order, `chunk_size` at a time).
    """
    cache = []
    for signal in signals:
        chunks = []
        for batch in probe_batches:
            rows = signal.for_rows(batch["sample_index"])
            for start in range(0, rows.logprobs.shape[0], chunk_size):
                part = slice(start, start + chunk_size)
                chunks.append(TopKSignal(rows.logprobs[part].float(), rows.indices[part], rows.tail_logmass[part].float()))
        cache.append(chunks)
    return cache


def build_schedule(kind: str, pool, teacher=None, probes: list[dict] | None = None, top_k: int = 0,
                   chunk_size: int = 1024, signals: list | None = None):
    """The teacher schedule named `kind` (one of `methods.SCHEDULES`), shared by the distill stage and
    the DistillKit integration: `fixed` = p(best) throughout, `cd` = p(1), …, p(N), `scd` = SCD's choice on
    the fixed `probes` (their teacher distributions read from cached `signals` when given).

    Raises:
        ValueError: an unknown schedule name.
    """
    from distillkit_scd.schedules.teacher_checkpoints import (
        FixedSchedule,
        ProgressiveSchedule,
        ScheduledSelection,
    )

    if kind == "fixed":
        return FixedSchedule(pool.best_index)
    if kind == "cd":
        return ProgressiveSchedule(pool.num_checkpoints)
    if kind != "scd":
        raise ValueError(f"teacher schedule: expected fixed, cd or scd, got {kind!r}")
    selector = SCDSelector(pool, teacher, probes, top_k=top_k, chunk_size=chunk_size)
    if signals is not None:
        head = teacher.get_output_embeddings().weight
        selector.vocab_size = getattr(head, "ds_shape", head.shape)[0]  # ZeRO-3 partitions the weight
        selector.set_cache(cache_from_signals(signals, probes, chunk_size), pool.best_index)
    return ScheduledSelection(selector)
