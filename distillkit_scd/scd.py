"""SCD's checkpoint choice, made cheap: teacher probe distributions are cached once per run.

j* = argmin_j  E KL(p_best ‖ p_j) + E KL(q_{i−1} ‖ p_j), expectations over the label positions of a fixed
probe subset of the train split (paper section 5.2). The first term does not depend on the student and
is computed once; the teacher side of the second term is cached per checkpoint (full log-probs, or top-k
plus a uniform tail bucket — `losses.TopKSignal`), so each decision costs one student forward over the
probe set instead of N teacher passes.
"""

from __future__ import annotations

import logging

import torch

from distillkit_scd.losses import TopKSignal
from distillkit_scd.model_outputs import iter_label_logprobs, label_hidden
from distillkit_scd.schedules import select_checkpoint

logger = logging.getLogger(__name__)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probs (c, V)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class SCDSelector:
    """Caches each checkpoint's probe-set distributions; `select(student)` returns (j*, terms).

    Args:
        pool: `teachers.CheckpointPool`.
        teacher: the live teacher module (checkpoints are swapped into it in place while caching; the
            previously active checkpoint is restored afterwards).
        probe_batches: collated batches of the probe subset (fixed for the run).
        top_k: 0 keeps full log-probs (exact); k > 0 keeps top-k + tail bucket (bounded memory).
        chunk_size: label positions per logits chunk.
    """

    def __init__(self, pool, teacher, probe_batches: list[dict], top_k: int = 0, chunk_size: int = 1024):
        self.pool = pool
        self.teacher = teacher
        self.probe_batches = probe_batches
        self.top_k = top_k
        self.chunk_size = chunk_size
        self.cache: list[list] | None = None  # [checkpoint][chunk] → log-probs (c, V) or TopKSignal
        self.kl_best: list[float] | None = None
        self.teacher_passes = 0
        self.vocab_size = 0

    def _store(self, logprobs: torch.Tensor):
        if self.top_k <= 0:
            return logprobs.cpu()
        values, indices = logprobs.topk(min(self.top_k, logprobs.shape[-1]), dim=-1)
        return TopKSignal(values.cpu(), indices.to(torch.int32).cpu())

    def _dense(self, item, device) -> torch.Tensor:
        if isinstance(item, TopKSignal):
            return item.dense_logprobs(slice(None), self.vocab_size).to(device)
        return item.to(device)

    def precompute(self) -> None:
        """One teacher pass per checkpoint over the probe set; then term 1 for every checkpoint."""
        restore = self.pool.active_index
        self.cache = []
        for j in range(self.pool.num_checkpoints):
            self.pool.load_into(self.teacher, j)
            chunks = []
            for batch in self.probe_batches:
                hidden, _, targets = label_hidden(self.teacher, batch)
                for _, logprobs, _ in iter_label_logprobs(self.teacher, hidden, targets, self.chunk_size):
                    self.vocab_size = logprobs.shape[-1]
                    chunks.append(self._store(logprobs))
            self.cache.append(chunks)
            self.teacher_passes += 1
        if restore is not None:
            self.pool.load_into(self.teacher, restore)
        best = self.pool.best_index
        self.kl_best = [self._mean_kl(lambda c: self._dense(self.cache[best][c], "cpu"), j)
                        for j in range(self.pool.num_checkpoints)]

    def _mean_kl(self, log_p_of_chunk, j: int) -> float:
        total, count = 0.0, 0
        for c, item in enumerate(self.cache[j]):
            log_p = log_p_of_chunk(c)
            total += _kl_rows(log_p, self._dense(item, log_p.device)).double().sum().item()
            count += log_p.shape[0]
        return total / max(count, 1)

    @torch.no_grad()
    def student_probe_logprobs(self, student) -> list[torch.Tensor]:
        was_training = student.training
        student.eval()
        out = []
        for batch in self.probe_batches:
            hidden, _, targets = label_hidden(student, batch)
            out.extend(lp.cpu() for _, lp, _ in iter_label_logprobs(student, hidden, targets, self.chunk_size))
        student.train(was_training)
        return out

    def select(self, student) -> tuple[int, list[dict]]:
        """One student pass over the probe set → (j*, per-checkpoint terms for the schedule log)."""
        if self.cache is None:
            self.precompute()
        log_q = self.student_probe_logprobs(student)
        kl_student = [self._mean_kl(lambda c: log_q[c], j) for j in range(self.pool.num_checkpoints)]
        chosen = select_checkpoint(self.kl_best, kl_student)
        terms = [{"checkpoint": j, "kl_best": self.kl_best[j], "kl_student": kl_student[j]}
                 for j in range(self.pool.num_checkpoints)]
        return chosen, terms
