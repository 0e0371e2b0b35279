"""`plan`: parameter counts from architecture, step arithmetic, and memory numbers in the right range."""

import json
from pathlib import Path

import pytest

from distillkit_scd.config import load_recipe, recipe_from_dict
from distillkit_scd.pipeline.plan import (
    GIB,
    KNOWN_CONFIGS,
    Arch,
    Parallel,
    format_plan,
    memory_estimate,
    model_arch,
    parallel_setup,
    step_counts,
    train_rows,
)

ROOT = Path(__file__).resolve().parent.parent


def _params_by_loops(cfg: dict) -> int:
    """Independent count: walk the modules of a Llama decoder one tensor at a time."""
    h, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    d = h // cfg["num_attention_heads"]
    tensors = [(cfg["vocab_size"], h)]  # embed_tokens
    for _ in range(layers):
        tensors += [(cfg["num_attention_heads"] * d, h), (cfg["num_key_value_heads"] * d, h),
                    (cfg["num_key_value_heads"] * d, h), (h, cfg["num_attention_heads"] * d),
                    (inter, h), (inter, h), (h, inter), (h, 1), (h, 1)]
    tensors.append((h, 1))  # final norm
    if not cfg["tie_word_embeddings"]:
        tensors.append((cfg["vocab_size"], h))
    return sum(a * b for a, b in tensors)


@pytest.mark.parametrize("hub_id, billions", [("meta-llama/Llama-3.1-8B-Instruct", 8.030),
                                              ("meta-llama/Llama-3.2-3B-Instruct", 3.213),
                                              ("meta-llama/Llama-3.2-1B-Instruct", 1.236)])
def test_parameter_counts(hub_id, billions):
    """Counts match a per-tensor walk and the published sizes (8.03 B, 3.21 B, 1.24 B)."""
    arch = model_arch(hub_id)
    assert arch.params == _params_by_loops(KNOWN_CONFIGS[hub_id])
    assert arch.params / 1e9 == pytest.approx(billions, abs=0.002)


def test_8b_teacher_weights_are_16_gb():
    """The 8B teacher in bf16 is ≈ 16 GB of weights (2 bytes per parameter)."""
    assert model_arch("meta-llama/Llama-3.1-8B-Instruct").params * 2 / 1e9 == pytest.approx(16.06, abs=0.05)


def test_local_config_json_is_read(tmp_path):
    """A local folder's config.json gives the architecture; an unknown Hub id gives None (no download)."""
    (tmp_path / "config.json").write_text(json.dumps({**KNOWN_CONFIGS["meta-llama/Llama-3.2-1B"], "x": 1}))
    assert model_arch(str(tmp_path)).params == model_arch("meta-llama/Llama-3.2-1B").params
    assert model_arch("someone/unknown-model") is None


def test_memory_8b_3b_zero3_on_8_gpus(monkeypatch):
    """Paper setting: model state is 16 bytes/parameter sharded over 8 GPUs — ≈ 15 GiB for the 8B SFT,
    ≈ 6 GiB for the 3B — and every stage fits an 80 GB GPU."""
    monkeypatch.chdir(ROOT)
    r = load_recipe("recipes/paper/pubmedqa.yaml")
    par = parallel_setup(r)
    assert par == Parallel(world_size=8, zero_stage=3, offload_optimizer=False, offload_param=False)
    t, s = model_arch(r.models.teacher), model_arch(r.models.student)
    mem = memory_estimate(r, s, t, par)
    state = lambda parts: parts["weights"] + parts["gradients"] + parts["optimizer"]  # noqa: E731
    assert state(mem["sft-teacher"]) == pytest.approx(t.params * 16 / 8 / GIB)
    assert 14 < state(mem["sft-teacher"]) < 16 and 5.5 < state(mem["sft-student"]) < 6.5
    assert mem["distill"]["teacher weights"] == pytest.approx(t.params * 2 / 8 / GIB)
    assert all(parts["total"] < 80 for parts in mem.values())


def test_memory_single_gpu_offload(monkeypatch):
    """One GPU, ZeRO-3 + optimizer offload: no optimizer state on the GPU; 8B bf16 weights+grads ≈ 30 GiB."""
    monkeypatch.chdir(ROOT)
    r = load_recipe("recipes/paper/pubmedqa_1xA100_80GB.yaml")
    par = parallel_setup(r)
    assert par.world_size == 1 and par.zero_stage == 3 and par.offload_optimizer
    mem = memory_estimate(r, model_arch(r.models.student), model_arch(r.models.teacher), par)
    assert mem["sft-teacher"]["optimizer"] == 0
    assert 29 < mem["sft-teacher"]["weights"] + mem["sft-teacher"]["gradients"] < 31


def test_activations_scale_with_tokens_and_checkpointing():
    """Activations grow linearly with batch × length and shrink with gradient checkpointing."""
    base = {"name": "t", "output_dir": "o", "task": {"name": "synthetic", "max_length": 512},
            "models": {"teacher": "tiny:teacher", "student": "tiny:student", "dtype": "bfloat16"}}
    arch = model_arch("meta-llama/Llama-3.2-3B")
    par = Parallel(1, 0, False, False)
    act = lambda extra: memory_estimate(recipe_from_dict({**base, **extra}), arch, None, par)["sft-student"]["activations"]  # noqa: E731
    one = act({"optim": {"per_device_train_batch_size": 1}})
    assert act({"optim": {"per_device_train_batch_size": 4}}) == pytest.approx(4 * one)
    assert act({"training_args": {"gradient_checkpointing": True}, "optim": {"per_device_train_batch_size": 1}}) < one / 5


def test_step_counts_by_hand():
    """450 rows, batch 1 × 8 processes: 57 steps/epoch (ceil 56.25); 4 epochs = 228; T = 2 epochs = 114;
    N = 4 stages → 456 distillation steps per method."""
    r = recipe_from_dict({"name": "t", "output_dir": "o", "task": {"name": "pubmedqa"},
                          "models": {"teacher": "a", "student": "b"},
                          "optim": {"per_device_train_batch_size": 1}, "launcher": {"num_processes": 8},
                          "sft": {"num_checkpoints": 4, "teacher": {"num_train_epochs": 4}},
                          "distill": {"epochs_per_stage": 2}})
    steps = step_counts(r, 450)
    assert (steps["steps_per_epoch"], steps["sft-teacher"], steps["T"], steps["distill (each method)"]) == \
        (57, 228, 114, 456)
    r2 = recipe_from_dict({**r.to_dict(), "distill": {**r.to_dict()["distill"], "steps_per_stage": 10}})
    assert step_counts(r2, 450)["distill (each method)"] == 40


def test_format_plan_mentions_stages_steps_and_memory(monkeypatch):
    """The printed plan lists the stages, the step counts and the per-device memory."""
    monkeypatch.chdir(ROOT)
    text = format_plan(load_recipe("recipes/paper/crade.yaml"))
    assert "distill-scd_aw" in text and "accelerate launch" in text
    assert "8.030 B parameters, 16.1 GB of bfloat16 weights" in text
    assert "memory per device" in text and "ZeRO stage 3" in text


def test_arch_uses_explicit_head_dim():
    """A config with head_dim ≠ hidden/heads (e.g. Gemma-style) counts attention with head_dim."""
    a = Arch(hidden_size=8, num_hidden_layers=1, intermediate_size=4, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=10, tie_word_embeddings=True, head_dim=6)
    assert a.params == 10 * 8 + (2 * 8 * 12 + 2 * 8 * 6 + 3 * 8 * 4 + 2 * 8) + 8


_STUDENT = {"vocab_size": 32000, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 4}
_TEACHER = {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6,
            "num_attention_heads": 8, "num_key_value_heads": 8}


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc (Linux only)")
def test_memory_estimate_within_25_percent_of_measured_peak():
    """`plan`'s distillation-stage total (fp32 student + teacher at V = 32k, batch 8 × 128, chunk 128) is within
    ±25 % of the peak RSS growth of two real trainer steps in a fresh process (tests/peak_rss_step.py)."""
    import os
    import subprocess
    import sys

    spec = {"student": _STUDENT, "teacher": _TEACHER, "batch": 8, "length": 128, "prompt": 64, "chunk_size": 128}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "peak_rss_step.py"), json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["growth"] / GIB

    recipe = recipe_from_dict({"name": "t", "output_dir": "o", "task": {"name": "synthetic", "max_length": 128},
                               "models": {"teacher": "a", "student": "b", "dtype": "float32"},
                               "optim": {"per_device_train_batch_size": 8}, "distill": {"chunk_size": 128}})
    arch = lambda kw: Arch(**{k: kw[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size",  # noqa: E731
                                                  "num_attention_heads", "num_key_value_heads", "vocab_size")})
    estimate = memory_estimate(recipe, arch(_STUDENT), arch(_TEACHER), Parallel(1, 0, False, False))["distill"]["total"]
    assert 0.75 * measured <= estimate <= 1.25 * measured, (estimate, measured)  # full (B, L, V) logits: 1.3×


def test_time_estimate_by_hand(monkeypatch):
    """FLOPs per stage = (6·P trained | 2·P forward) × tokens, P without the input embedding; printed with GPU-hours.
    Hand numbers for the paper's PubMedQA recipe at 450 rows: 8 processes × batch 1 × 512 tokens per step."""
    from distillkit_scd.pipeline.plan_time import ASSUMED_MFU, stage_flops

    monkeypatch.chdir(ROOT)
    r = load_recipe("recipes/paper/pubmedqa.yaml")
    t, s = model_arch(r.models.teacher), model_arch(r.models.student)
    pt = 8_030_261_248 - 128256 * 4096  # untied 8B: the input embedding is a lookup
    ps = 3_212_749_824  # tied 3B: the embedding is also the lm_head, counted once
    assert (t.params, s.params) == (8_030_261_248, 3_212_749_824)
    steps = step_counts(r, 450)
    tokens = 8 * 512
    flops = stage_flops(r, 450, steps, s, t)
    assert flops["sft-teacher"] == 6 * pt * steps["sft-teacher"] * tokens
    assert flops["aw-table"] == 2 * (ps + 4 * pt) * 450 * 512
    assert flops["distill (5 methods)"] == 5 * steps["distill (each method)"] * tokens * (6 * ps + 2 * pt)
    cached = recipe_from_dict({**r.to_dict(), "distill": {**r.to_dict()["distill"], "teacher_signal": "cached"}})
    f2 = stage_flops(cached, 450, steps, s, t)
    assert f2["signals"] == 2 * 4 * pt * 450 * 512 and f2["distill (5 methods)"] < flops["distill (5 methods)"]
    rows, _ = train_rows(r)  # the plan uses the local data's size when it is on disk
    hours = sum(stage_flops(r, rows, step_counts(r, rows), s, t).values()) / (989e12 * ASSUMED_MFU) / 3600
    assert f"H100/H200 (989 TFLOP/s bf16): {hours:.2f} GPU-hours, {hours / 8:.2f} h wall on 8 GPU(s)" in format_plan(r)


def test_two_nodes_plan_and_launch(monkeypatch):
    """The 2 × 8 recipe: 16 processes on 2 machines under ZeRO-3; `plan` says so and divides GPU-hours by 16."""
    from distillkit_scd.config.launch import resolve_launch

    monkeypatch.chdir(ROOT)
    r = load_recipe("recipes/multinode/pubmedqa_2x8xH100.yaml")
    launch = resolve_launch(r)
    assert (launch.mode, launch.world_size, launch.num_machines, launch.global_batch) == ("deepspeed", 16, 2, 16)
    par = parallel_setup(r)
    assert (par.world_size, par.num_machines, par.zero_stage) == (16, 2, 3)
    text = format_plan(r)
    assert "16 process(es) on 2 nodes, ZeRO stage 3" in text and "h wall on 16 GPU(s)" in text
