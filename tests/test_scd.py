"""SCD selection: the formula on hand-made distributions, exactness of the full cache against N naive
teacher passes, and the documented bound on the top-k + tail approximation."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from distillkit_scd.data.collate import DistillationCollator
from distillkit_scd.losses import topk_signal
from distillkit_scd.schedules.scd_selector import SCDSelector, kl_rows, probe_batches, probe_indices


class TableLM(torch.nn.Module):
    """A 'language model' with hand-made logits: the logits at a position are table[current token]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        vocab = table.shape[0]
        self.embed = torch.nn.Embedding(vocab, vocab)
        self.head = torch.nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(table)
            self.head.weight.copy_(torch.eye(vocab))
        embed = self.embed
        self.decoder = types.SimpleNamespace()
        self._decode = lambda input_ids, **_: types.SimpleNamespace(last_hidden_state=embed(input_ids))

    def get_decoder(self):
        return self._decode

    def get_output_embeddings(self):
        return self.head


class TablePool:
    """Checkpoint j = logits table j, swapped in place into a TableLM."""

    def __init__(self, tables, best_index):
        self.tables, self.best_index, self.active_index = tables, best_index, None
        self.num_checkpoints = len(tables)
        self.loads = 0

    def load_into(self, model, j):
        if j != self.active_index:
            with torch.no_grad():
                model.embed.weight.copy_(self.tables[j])
            self.active_index = j
            self.loads += 1


def _reference_terms(tables, student_table, best, positions_tokens):
    """Float64 loop: mean over label positions (given by the token at each predicting position)."""
    def kl(p_logits, q_logits):
        p = torch.softmax(p_logits.double(), -1)
        return float((p * (torch.log_softmax(p_logits.double(), -1) - torch.log_softmax(q_logits.double(), -1))).sum())

    term1 = [sum(kl(tables[best][t], tables[j][t]) for t in positions_tokens) / len(positions_tokens)
             for j in range(len(tables))]
    term2 = [sum(kl(student_table[t], tables[j][t]) for t in positions_tokens) / len(positions_tokens)
             for j in range(len(tables))]
    return term1, term2


def _batches():
    rows = [{"input_ids": [0, 1, 2, 3], "labels": [-100, -100, 2, 3]},  # positions with tokens 1, 2 predict
            {"input_ids": [4, 0, 5], "labels": [-100, 0, 5]}]  # positions with tokens 4, 0 predict
    return [DistillationCollator(pad_token_id=0)(rows)], [1, 2, 4, 0]


def test_synthetic_terms_match_formula():
    """Terms equal a float64 loop of the formula; j* is the argmin of their sum; teacher restored after caching."""
    gen = torch.Generator().manual_seed(0)
    final = torch.randn(6, 6, generator=gen) * 3
    tables = [final * s for s in (0.2, 0.5, 0.8, 1.0)]  # a teacher trajectory
    student = final * 0.3 + torch.randn(6, 6, generator=gen) * 0.5
    batches, tokens = _batches()
    pool = TablePool(tables, best_index=2)
    teacher = TableLM(tables[3])
    pool.active_index = 3
    sel = SCDSelector(pool, teacher, batches, top_k=0, chunk_size=3)  # 3 < 4 positions: two chunks
    chosen, terms = sel.select(TableLM(student))
    t1, t2 = _reference_terms(tables, student, 2, tokens)
    assert sel.num_positions == 4 and sel.teacher_passes == 4
    torch.testing.assert_close(torch.tensor([t["kl_best"] for t in terms], dtype=torch.float64),
                               torch.tensor(t1, dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.tensor([t["kl_student"] for t in terms], dtype=torch.float64),
                               torch.tensor(t2, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    sums = [a + b for a, b in zip(t1, t2)]
    assert chosen == min(range(4), key=lambda j: sums[j])
    assert terms[2]["kl_best"] == pytest.approx(0.0, abs=1e-12)
    assert pool.active_index == 3 and torch.equal(teacher.embed.weight, tables[3])


def test_student_equal_to_best_picks_best():
    """If q = p_best, both terms vanish at best and are positive elsewhere, so j* = best."""
    gen = torch.Generator().manual_seed(1)
    tables = [torch.randn(6, 6, generator=gen) * 2 for _ in range(3)]
    batches, _ = _batches()
    for best in range(3):
        sel = SCDSelector(TablePool(tables, best), TableLM(tables[0]), batches)
        assert sel.select(TableLM(tables[best]))[0] == best


def test_second_decision_costs_one_student_pass():
    """select() runs the N teacher passes once; later decisions only run the student."""
    tables = [torch.randn(6, 6) for _ in range(3)]
    batches, _ = _batches()
    pool = TablePool(tables, 1)
    sel = SCDSelector(pool, TableLM(tables[0]), batches)
    sel.select(TableLM(tables[0]))
    loads = pool.loads
    sel.select(TableLM(tables[2]))
    assert sel.teacher_passes == 3 and sel.student_passes == 2 and pool.loads == loads


def _tiny_llama(seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=41, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def test_full_cache_equals_naive_teacher_passes(tmp_path):
    """Full cache (in-place swaps, chunked head) == N fresh teacher loads with full logits, float64 KL."""
    from transformers import AutoModelForCausalLM

    from distillkit_scd.models.checkpoints import CheckpointEntry, write_manifest
    from distillkit_scd.teachers.pool import CheckpointPool

    entries = []
    for j in range(3):
        _tiny_llama(10 + j).save_pretrained(tmp_path / f"ckpt-{j}", safe_serialization=True)
        entries.append(CheckpointEntry(j, j + 1, float(j + 1), f"ckpt-{j}"))
    write_manifest(tmp_path, entries, best_index=1, selected_by="test")
    pool = CheckpointPool(tmp_path)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (9, 5, 12, 7):
        ids = torch.randint(1, 41, (n,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    batches = [DistillationCollator(0)(rows[:3]), DistillationCollator(0)(rows[3:])]
    teacher = pool.load_model(0)
    student = _tiny_llama(99)
    chosen, terms = SCDSelector(pool, teacher, batches, top_k=0, chunk_size=5).select(student)

    def label_logprobs(model):  # naive: full logits, float64, positions s with labels[s+1] != -100
        out = []
        for b in batches:
            with torch.no_grad():
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                               position_ids=b["position_ids"]).logits.double()
            mask = b["labels"][:, 1:] != -100
            out.append(F.log_softmax(logits[:, :-1][mask], -1))
        return torch.cat(out)

    fresh = [label_logprobs(AutoModelForCausalLM.from_pretrained(str(pool.path(j)), dtype=torch.float32).eval())
             for j in range(3)]
    q = label_logprobs(student)
    ref1 = [float(kl_rows(fresh[1], fresh[j]).mean()) for j in range(3)]
    ref2 = [float(kl_rows(q, fresh[j]).mean()) for j in range(3)]
    torch.testing.assert_close(torch.tensor([t["kl_best"] for t in terms], dtype=torch.float64),
                               torch.tensor(ref1, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.tensor([t["kl_student"] for t in terms], dtype=torch.float64),
                               torch.tensor(ref2, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    assert chosen == min(range(3), key=lambda j: ref1[j] + ref2[j])
    assert pool.active_index == 0


@pytest.mark.parametrize("k", [1, 4, 16, 40, 50])
def test_topk_error_identity_and_bound(k):
    """err = KL(q‖p̃) − KL(q‖p) = Σ_tail q·log(p/p̃) (float64), |err| ≤ q(tail)·max_tail |log(p/p̃)|, 0 at k = V."""
    gen = torch.Generator().manual_seed(k)
    V = 50
    log_p = F.log_softmax(torch.randn(64, V, generator=gen, dtype=torch.float64) * 3, -1)
    log_q = F.log_softmax(torch.randn(64, V, generator=gen, dtype=torch.float64) * 3, -1)
    approx = topk_signal(log_p.float(), k)
    log_pt = approx.dense_logprobs(slice(None), V).double()
    torch.testing.assert_close(torch.logsumexp(log_pt, -1), torch.zeros(64, dtype=torch.float64), atol=1e-5, rtol=0)
    err = kl_rows(log_q, log_pt) - kl_rows(log_q, log_p)
    tail = torch.ones_like(log_p, dtype=torch.bool).scatter(1, approx.indices.long(), False)
    ratio = torch.where(tail, log_p - log_pt, torch.zeros_like(log_p))
    identity = (log_q.exp() * ratio).sum(-1)
    torch.testing.assert_close(err, identity, atol=1e-5, rtol=1e-5)  # float32 storage of p̃
    bound = (log_q.exp() * tail).sum(-1) * ratio.abs().amax(-1)
    assert bool((err.abs() <= bound + 1e-5).all())
    if k >= V:
        assert float(err.abs().max()) < 1e-5


def test_topk_selector_close_to_exact():
    """Top-k + tail terms approach the exact ones as k grows and equal them at k = V."""
    gen = torch.Generator().manual_seed(3)
    final = torch.randn(6, 6, generator=gen) * 4
    tables = [final * s for s in (0.3, 0.7, 1.0)]
    batches, _ = _batches()
    exact = SCDSelector(TablePool(tables, 2), TableLM(tables[0]), batches, top_k=0)
    student = TableLM(final * 0.5)
    _, t_exact = exact.select(student)
    errs = []
    for k in (1, 3, 6):
        _, t_k = SCDSelector(TablePool(tables, 2), TableLM(tables[0]), batches, top_k=k).select(student)
        errs.append(max(abs(a["total"] - b["total"]) for a, b in zip(t_exact, t_k)))
    assert errs[-1] < 1e-6 and errs[0] >= errs[-1]


def test_probe_subset_fixed_by_seed():
    """The probe subset depends only on (num_rows, size, seed), is sorted and capped at num_rows."""
    a = probe_indices(100, 10, seed=7)
    assert a == probe_indices(100, 10, seed=7) and a == sorted(a) and len(set(a)) == 10
    assert a != probe_indices(100, 10, seed=8)
    assert probe_indices(5, 10, seed=0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="probe_size"):
        probe_indices(5, 0, seed=0)
    data = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]} for _ in range(5)]
    assert len(probe_batches(data, DistillationCollator(0), 5, 0, batch_size=2)) == 3


def test_empty_probe_labels_refused():
    """A probe set without label positions cannot rank checkpoints: ValueError, not NaN terms."""
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}]
    tables = [torch.randn(6, 6) for _ in range(2)]
    sel = SCDSelector(TablePool(tables, 0), TableLM(tables[0]), [DistillationCollator(0)(rows)])
    with pytest.raises(ValueError, match="no label positions"):
        sel.select(TableLM(tables[1]))


def test_probe_cache_read_from_cached_signals_equals_teacher_passes():
    """With `teacher_signal: cached` SCD reads its probe cache from the signals pass (here k = V: exact): the
    same terms and j* as N teacher probe passes, and no teacher pass of its own."""
    from datasets import Dataset

    from distillkit_scd.schedules.scd_selector import cache_from_signals
    from distillkit_scd.teachers.signal_cache import build_checkpoint_signals

    gen = torch.Generator().manual_seed(5)
    tables = [torch.randn(6, 6, generator=gen) * 2 for _ in range(4)]
    student = torch.randn(6, 6, generator=gen)
    rows = [{"input_ids": [0, 1, 2, 3], "labels": [-100, -100, 2, 3], "sample_index": 0},
            {"input_ids": [4, 0, 5], "labels": [-100, 0, 5], "sample_index": 1}]
    collator = DistillationCollator(pad_token_id=0)
    probes = [collator(rows)]
    pool, teacher = TablePool(tables, best_index=2), TableLM(tables[0])
    signals = []
    for j in range(4):
        pool.load_into(teacher, j)
        signals.append(build_checkpoint_signals(teacher, Dataset.from_list(rows), collator, 6, batch_size=1))
    want = SCDSelector(pool, teacher, probes, top_k=0, chunk_size=3).select(TableLM(student))
    cached = SCDSelector(pool, teacher, probes, top_k=6, chunk_size=3)
    cached.vocab_size = 6
    cached.set_cache(cache_from_signals(signals, probes, 3), pool.best_index)
    got = cached.select(TableLM(student))
    assert got[0] == want[0] and cached.teacher_passes == 0
    assert [t["total"] for t in got[1]] == pytest.approx([t["total"] for t in want[1]], rel=1e-5, abs=1e-6)
