"""AW table: equals a per-sample float64 loop, refuses foreign ids, round-trips, and its cache key (and the
stage) reacts to every input that changes the numbers."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file, save_file

from distillkit_scd.models.checkpoints import CheckpointEntry, write_manifest
from distillkit_scd.teachers.aw_table import (
    TABLE_JSON,
    TABLE_TENSORS,
    AWTable,
    aw_cache_key,
    compute_aw_table,
)
from distillkit_scd.teachers.pool import CheckpointPool
from distillkit_scd.utils import hashing


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(hashing.HASH_CACHE_ENV, str(tmp_path / "hash_cache.json"))


def _llama(seed, hidden=16, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=43, hidden_size=hidden, intermediate_size=24, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _dataset(seed=0, n=7):
    gen = torch.Generator().manual_seed(seed)
    rows = {"id": [], "input_ids": [], "labels": []}
    for i in range(n):
        length = int(torch.randint(4, 15, (1,), generator=gen))
        ids = torch.randint(1, 43, (length,), generator=gen).tolist()
        cut = length // 2
        labels = [-100] * cut + ids[cut:]
        if i == 3:
            labels = [-100] * length  # a row without label tokens → AW 0.5
        rows["id"].append(f"row-{i}")
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


def _reference_loss(model, row):
    """Batch of 1, float64 copy of the model, full logits: −Σ log p(y_s | y_<s) over label positions."""
    import copy

    m = copy.deepcopy(model).double()
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        logp = F.log_softmax(m(input_ids=ids).logits[0].double(), -1)  # (T, V)
    total = 0.0
    for s in range(1, len(row["labels"])):
        if row["labels"][s] != -100:
            total -= float(logp[s - 1, row["labels"][s]])
    return total


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("aw_pool")
    entries = []
    for j in range(3):
        _llama(20 + j, hidden=24, layers=3).save_pretrained(root / f"checkpoint-{j}", safe_serialization=True)
        entries.append(CheckpointEntry(j, j + 1, float(j + 1), f"checkpoint-{j}"))
    write_manifest(root, entries, best_index=2, selected_by="test")
    _llama(5).save_pretrained(root / "student", safe_serialization=True)
    return root


def test_table_equals_per_sample_float64_loop(pool_dir):
    """L_S, L_T^(j) (batched, padded, length-sorted, in-place swaps) == batch-1 float64 loop; AW = L_S/(L_S+L_T)."""
    from transformers import AutoModelForCausalLM

    data = _dataset()
    pool = CheckpointPool(pool_dir)
    student = AutoModelForCausalLM.from_pretrained(str(pool_dir / "student"), dtype=torch.float32)
    teacher = pool.load_model(2)
    table = compute_aw_table(student, pool, data, batch_size=3, teacher=teacher, chunk_size=4)
    fresh = [AutoModelForCausalLM.from_pretrained(str(pool.path(j)), dtype=torch.float32) for j in range(3)]
    ref_s = torch.tensor([_reference_loss(student, r) for r in data], dtype=torch.float64)
    ref_t = torch.tensor([[_reference_loss(t, r) for t in fresh] for r in data], dtype=torch.float64)
    torch.testing.assert_close(table.student_loss, ref_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table.teacher_loss, ref_t, rtol=1e-5, atol=1e-5)
    ref_w = torch.where((ref_s[:, None] + ref_t) > 0, ref_s[:, None] / (ref_s[:, None] + ref_t), 0.5)
    torch.testing.assert_close(table.weights, ref_w, rtol=1e-5, atol=1e-6)
    assert table.weights[3].tolist() == [0.5, 0.5, 0.5]
    assert table.ids == list(data["id"]) and pool.active_index == 2
    # The list-of-models form gives the same table.
    other = compute_aw_table(student, fresh, data, batch_size=2)
    torch.testing.assert_close(other.teacher_loss, table.teacher_loss, rtol=1e-6, atol=1e-6)


def test_weights_for_and_foreign_ids():
    """weights_for returns rows in the order asked; ids from other data raise ValueError naming them."""
    table = AWTable(["a", "b", "c"], torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1.0, 3.0], [2.0, 2.0], [1.0, 0.0]]))
    torch.testing.assert_close(table.weights_for(["c", "a"]),
                               torch.tensor([[0.75, 1.0], [0.5, 0.25]], dtype=torch.float64))
    torch.testing.assert_close(table.column(1), torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="'zzz'"):
        table.weights_for(["a", "zzz"])
    with pytest.raises(ValueError, match="more than once"):
        AWTable(["a", "a"], torch.ones(2), torch.ones(2, 1))
    with pytest.raises(ValueError, match="teacher_loss"):
        AWTable(["a", "b"], torch.ones(2), torch.ones(3, 1))


def test_save_load_round_trip_and_tamper(tmp_path):
    """save → load gives identical tensors, ids, key; a tensors file from another table is refused."""
    table = AWTable(["x", "y"], torch.tensor([0.5, 2.0]), torch.tensor([[1.0, 2.0], [3.0, 0.25]]), key="k1",
                    metadata={"task": "t"})
    path = table.save(tmp_path / "aw")
    assert path.name == TABLE_JSON
    back = AWTable.load(path)
    assert back.ids == table.ids and back.key == "k1" and back.metadata == {"task": "t"}
    assert torch.equal(back.teacher_loss, table.teacher_loss) and torch.equal(back.weights, table.weights)
    assert torch.equal(load_file(str(tmp_path / "aw" / TABLE_TENSORS))["weights"], table.weights)
    AWTable(["x", "y"], torch.tensor([1.0, 2.0]), torch.ones(2, 2)).save(tmp_path / "other")
    shutil.copy(tmp_path / "other" / TABLE_TENSORS, tmp_path / "aw" / TABLE_TENSORS)
    with pytest.raises(ValueError, match="sha256"):
        AWTable.load(path)
    with pytest.raises(ValueError, match="not a readable AW table"):
        AWTable.load(tmp_path / "missing")


def test_cache_key_invalidation(tmp_path, pool_dir):
    """The key is stable for unchanged inputs (and a moved folder), and changes with data, a checkpoint's
    weights, max_length or dtype."""
    root = tmp_path / "copy"
    shutil.copytree(pool_dir, root)
    ckpts = [root / f"checkpoint-{j}" for j in range(3)]
    data = _dataset()
    key = aw_cache_key(root / "student", ckpts, data, 64)
    assert key == aw_cache_key(root / "student", ckpts, data, 64)
    assert key == aw_cache_key(pool_dir / "student", [pool_dir / f"checkpoint-{j}" for j in range(3)], data, 64)
    assert key != aw_cache_key(root / "student", ckpts, _dataset(seed=1), 64)
    changed = data.map(lambda r, i: {"labels": r["labels"][:-1] + [-100]} if i == 0 else {}, with_indices=True)
    assert key != aw_cache_key(root / "student", ckpts, changed, 64)
    assert key != aw_cache_key(root / "student", ckpts, data, 32)
    assert key != aw_cache_key(root / "student", ckpts, data, 64, dtype="bfloat16")
    assert key != aw_cache_key(root / "student", ckpts[::-1], data, 64)
    f = ckpts[1] / "model.safetensors"
    state = load_file(str(f))
    state["model.norm.weight"][3] += 1e-3  # one value in one tensor
    save_file(state, str(f), metadata={"format": "pt"})
    assert key != aw_cache_key(root / "student", ckpts, data, 64)


def test_file_hash_memo_follows_mtime(tmp_path):
    """A rewritten file (new mtime) is re-hashed; the digest is a full sha256 of the content."""
    import hashlib
    import os

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    assert hashing.file_hash(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    f.write_bytes(b"a" * 999 + b"b")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert hashing.file_hash(f) == hashlib.sha256(b"a" * 999 + b"b").hexdigest()


def test_run_aw_table_reuses_and_recomputes(tmp_path, monkeypatch):
    """The stage writes OUT/aw/, reuses the table while inputs are unchanged, recomputes when a checkpoint
    changes; the weights are those of compute_aw_table on the same models."""
    from distillkit_scd.config import recipe_from_dict
    from distillkit_scd.models.loading import make_tiny_pair
    from distillkit_scd.teachers import aw_table as weighting

    out = tmp_path / "run"
    recipe = recipe_from_dict({"name": "t", "output_dir": str(out),
                               "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
                               "task": {"name": "synthetic", "max_length": 96,
                                        "options": {"num_train": 12, "num_test": 4}},
                               "evaluation": {"batch_size": 5}, "sft": {"num_checkpoints": 2}})
    teacher_dir, student_dir = make_tiny_pair(out / "tiny_models", seed=recipe.seed)
    sft_t, sft_s = out / "sft" / "teacher", out / "sft" / "student"
    for j in range(2):
        shutil.copytree(teacher_dir, sft_t / f"checkpoint-{j + 1}")
    f = sft_t / "checkpoint-1" / "model.safetensors"
    state = load_file(str(f))
    state["lm_head.weight"] *= 0.5
    save_file(state, str(f), metadata={"format": "pt"})
    write_manifest(sft_t, [CheckpointEntry(j, j + 1, float(j + 1), f"checkpoint-{j + 1}") for j in range(2)], 1, "t")
    shutil.copytree(student_dir, sft_s / "checkpoint-1")
    write_manifest(sft_s, [CheckpointEntry(0, 1, 1.0, "checkpoint-1")], 0, "t")

    path = weighting.run_aw_table(recipe)
    table = AWTable.load(path)
    assert path == out / "aw" / TABLE_JSON and table.weights.shape[1] == 2 and len(table.ids) >= 8  # validation carved out
    assert not torch.allclose(table.column(0), table.column(1))
    calls = []
    real = weighting.compute_aw_table
    monkeypatch.setattr(weighting, "compute_aw_table", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert weighting.run_aw_table(recipe) == path and calls == []  # reused
    state["lm_head.weight"] *= 0.5
    save_file(state, str(f), metadata={"format": "pt"})
    weighting.run_aw_table(recipe)
    assert calls == [1]
    new = AWTable.load(path)
    assert new.key != table.key and torch.equal(new.column(1), table.column(1))
    assert not torch.equal(new.column(0), table.column(0))
