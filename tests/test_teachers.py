"""Checkpoint pool and in-place teacher swaps: same storage, same outputs as a fresh load, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from distillkit_scd.models.checkpoints import CheckpointEntry, checkpoint_files, read_manifest, write_manifest
from distillkit_scd.teachers.pool import CheckpointPool, load_weights_in_place


def _llama(seed: int, tie: bool = False, hidden: int = 16):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=37, hidden_size=hidden, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _save(model, folder, **kwargs):
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def _fresh(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    """Three untied checkpoints (seeds 0, 1, 2), the middle one sharded, and a manifest with relative paths."""
    root = tmp_path_factory.mktemp("pool")
    entries = []
    for j in range(3):
        kwargs = {"max_shard_size": "8KB"} if j == 1 else {}
        _save(_llama(seed=j), root / f"checkpoint-{j + 1}", **kwargs)
        entries.append(CheckpointEntry(index=j, step=j + 1, epoch=(j + 1) / 3, path=f"checkpoint-{j + 1}",
                                       val_loss=[2.0, 1.0, 1.5][j]))
    write_manifest(root, entries, best_index=1, selected_by="lowest validation loss")
    return root


IDS = torch.tensor([[1, 5, 7, 2, 30, 11, 4]])


def test_swap_keeps_storage_and_matches_fresh_load(pool_dir):
    """After load_into(j): every parameter keeps its storage pointer, and logits equal a fresh load of j."""
    pool = CheckpointPool(pool_dir / "manifest.json")
    assert pool.num_checkpoints == 3 and pool.best_index == 1
    assert (pool.path(1) / "model.safetensors.index.json").is_file()  # sharded one
    teacher = pool.load_model(0)
    assert pool.active_index == 0
    pointers = {n: p.data_ptr() for n, p in teacher.named_parameters()}
    for j in (1, 2, 0, 1):
        pool.load_into(teacher, j)
        assert pool.active_index == j
        assert {n: p.data_ptr() for n, p in teacher.named_parameters()} == pointers
        torch.testing.assert_close(_logits(teacher, IDS), _logits(_fresh(pool.path(j)), IDS), rtol=0, atol=0)


def test_tied_weights_stay_tied(tmp_path):
    """A tied model stays tied after a swap (lm_head IS embed_tokens) and takes the checkpoint's embedding."""
    folder = _save(_llama(seed=5, tie=True), tmp_path / "ckpt")
    assert "lm_head.weight" not in load_file(str(folder / "model.safetensors"))  # HF stores one copy
    model = _llama(seed=6, tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    load_weights_in_place(model, folder)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(_logits(model, IDS), _logits(_fresh(folder), IDS), rtol=0, atol=0)


def test_tied_pair_with_different_values_refused(tmp_path):
    """A checkpoint storing different lm_head and embed tensors cannot go into a tied model."""
    src = _llama(seed=1, tie=False)
    folder = _save(src, tmp_path / "untied")
    with pytest.raises(ValueError, match="ties"):
        load_weights_in_place(_llama(seed=2, tie=True), folder)


def test_untied_model_needs_lm_head(tmp_path):
    """An untied model refuses a checkpoint without lm_head.weight (no silent copy of the embedding)."""
    folder = _save(_llama(seed=1, tie=True), tmp_path / "tied")
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_weights_in_place(_llama(seed=2, tie=False), folder)


def _unchanged(model, before):
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_mismatched_checkpoint_refused_and_model_untouched(tmp_path):
    """A checkpoint of another shape raises ValueError naming the file and tensor; no weight changes."""
    folder = _save(_llama(seed=1, hidden=24), tmp_path / "wide")
    model = _llama(seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.embed_tokens\.weight' has shape"):
        load_weights_in_place(model, folder)
    assert _unchanged(model, before)


def test_extra_tensor_refused(tmp_path):
    """A tensor the model does not have is an error naming it."""
    folder = _save(_llama(seed=1), tmp_path / "extra")
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="layers.9.mlp.up_proj.weight"):
        load_weights_in_place(_llama(seed=2), folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_checkpoint_refused(tmp_path, pool_dir, bad):
    """NaN/inf weights: ValueError naming file and tensor; the model and active_index are unchanged."""
    folder = _save(_llama(seed=1), tmp_path / "nan")
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.1.self_attn.q_proj.weight"][0, 0] = bad
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model = _llama(seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.layers\.1\.self_attn\.q_proj\.weight'"):
        load_weights_in_place(model, folder)
    assert _unchanged(model, before)
    # Through a pool: active_index stays.
    (tmp_path / "m").mkdir()
    write_manifest(tmp_path / "m", [CheckpointEntry(0, 1, 1.0, str(folder))], 0, "test")
    pool = CheckpointPool(tmp_path / "m")
    with pytest.raises(ValueError, match="NaN/inf"):
        pool.load_into(model, 0)
    assert pool.active_index is None


def test_manifest_errors(tmp_path, pool_dir):
    """Missing/malformed manifests, bad indices and missing folders raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="not found"):
        read_manifest(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"checkpoints": [{"index": 1, "step": 1, "epoch": 1, "path": "x"}], "best_index": 0}))
    with pytest.raises(ValueError, match=r"checkpoints\[0\]\.index"):
        read_manifest(bad)
    bad.write_text(json.dumps({"checkpoints": [{"index": 0, "step": 1, "epoch": 1, "path": "x"}], "best_index": 3}))
    with pytest.raises(ValueError, match="best_index"):
        read_manifest(bad)
    with pytest.raises(ValueError, match="folder 'x' not found"):
        bad.write_text(json.dumps({"checkpoints": [{"index": 0, "step": 1, "epoch": 1, "path": "x"}],
                                   "best_index": 0}))
        CheckpointPool(bad)
    pool = CheckpointPool(pool_dir)
    with pytest.raises(ValueError, match="checkpoint index"):
        pool.path(3)
    entries, best, selected_by = read_manifest(pool_dir)
    assert [e.step for e in entries] == [1, 2, 3] and best == 1 and selected_by == "lowest validation loss"



def test_paths_from_a_manifest_stay_inside_its_folder(tmp_path, pool_dir):
    """A relative checkpoint path that climbs out of the manifest's folder is refused (an absolute one is
    the writer's explicit choice); a safetensors index cannot name a shard outside the checkpoint folder."""
    import shutil

    outside = tmp_path / "elsewhere"
    shutil.copytree(CheckpointPool(pool_dir).path(0), outside)
    home = tmp_path / "run"
    home.mkdir()
    manifest = home / "manifest.json"
    for path, ok in (("../elsewhere", False), (str(outside), True)):
        manifest.write_text(json.dumps({"checkpoints": [{"index": 0, "step": 1, "epoch": 1, "path": path}],
                                        "best_index": 0}))
        if ok:
            assert CheckpointPool(manifest).path(0) == outside
        else:
            with pytest.raises(ValueError, match=r"checkpoints\[0\]\.path: '../elsewhere' leads outside"):
                CheckpointPool(manifest)
    sharded = CheckpointPool(pool_dir).path(1)
    bad = tmp_path / "sharded"
    shutil.copytree(sharded, bad)
    index = next(bad.glob("*.index.json"))
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"][name] = "../elsewhere/model.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="is not a file name inside"):
        checkpoint_files(bad)


_ZERO3_WORKER = r'''
import os, sys
import deepspeed, torch, torch.distributed as dist
sys.path.insert(0, os.environ["REPO"])
from distillkit_scd.teachers.pool import load_weights_in_place
from distillkit_scd.utils.distributed import release_process_group
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

good, bad, out = sys.argv[1:4]
import torch._dynamo  # noqa: F401  (first imported inside zero.Init, it clashes with its Tensor.__new__ patch)
deepspeed.init_distributed(dist_backend="gloo")
with deepspeed.zero.Init(config_dict_or_path={"train_micro_batch_size_per_gpu": 1,
                                              "zero_optimization": {"stage": 3}}, dtype=torch.float32):
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(good))
params = list(model.parameters())
result = []
if not all(hasattr(p, "ds_id") for p in params):
    result.append("not-partitioned")
ptrs = [p.data_ptr() for p in params]
load_weights_in_place(model, good)
want = load_file(os.path.join(good, "model.safetensors"))
with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
    result += [n for n, p in model.named_parameters() if not torch.equal(p.data, want[n].to(p.dtype))]
try:
    load_weights_in_place(model, bad)
    result.append("nan-accepted")
except ValueError as err:
    if "NaN/inf" not in str(err):
        result.append("wrong-error")
if [p.data_ptr() for p in params] != ptrs:
    result.append("storage-changed")
with open(os.path.join(out, f"rank{dist.get_rank()}.txt"), "w") as fh:
    fh.write(" ".join(result) or "ok")
release_process_group()  # as every stage process does: gloo's teardown can SIGABRT a finished rank
'''


@pytest.mark.multiprocess
@pytest.mark.slow
def test_zero3_swap_two_cpu_processes(tmp_path):
    """ZeRO-3, 2 CPU processes (gloo): after a swap every rank gathers exactly the checkpoint's weights;
    a NaN checkpoint raises on BOTH ranks (validation runs everywhere, so nobody waits in a collective)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("deepspeed")
    good = _save(_llama(seed=3), tmp_path / "good")
    bad = _save(_llama(seed=4), tmp_path / "bad")
    state = load_file(str(bad / "model.safetensors"))
    state["model.norm.weight"][0] = float("nan")
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    worker = tmp_path / "worker.py"
    worker.write_text(_ZERO3_WORKER)
    env = {**os.environ, "REPO": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(worker), str(good), str(bad), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["ok", "ok"]


def _free_port() -> int:
    """A port nobody listens on now (fixed ports collide when two test runs share a machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

