"""Time estimate for `plan`: model FLOPs of each stage ÷ (GPU peak × an assumed MFU) → GPU-hours.

FLOPs per token are 6·P for a trained model and 2·P for a forward pass (Kaplan et al. 2020), where P counts
every matrix multiply weight (all parameters but the input embedding lookup; a tied embedding still counts
once, as the lm_head). Attention's L² term is left out (L ≤ 512 here: a few % of the FLOPs). Every row is
charged `task.max_length` tokens, so this is an upper bound on the compute. Evaluation (greedy generation,
memory-bound, not FLOP-bound) and validation passes are not included.

The MFU is ours, an assumption, not a measurement: 35 % is typical of 1–8 B dense models under ZeRO-3 with
bf16 on one node; `benchmarks/gpu_check.sh` measures the step's MFU on the GPU you have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillkit_scd.config import Recipe
from distillkit_scd.config.methods import METHODS

if TYPE_CHECKING:
    from distillkit_scd.pipeline.plan import Arch

ASSUMED_MFU = 0.35
GPU_PEAK_TFLOPS = {"H100/H200 (989 TFLOP/s bf16)": 989.0, "A100/A800 (312 TFLOP/s bf16)": 312.0}


def matmul_params(a: Arch) -> int:
    """Parameters that take part in a matrix multiply per token (all but the input embedding lookup)."""
    return a.params - (0 if a.tie_word_embeddings else a.vocab_size * a.hidden_size)


def stage_flops(recipe: Recipe, rows: int, steps: dict[str, int], student: Arch, teacher: Arch) -> dict[str, float]:
    """Model FLOPs of each stage of the whole run (keys as the plan prints them)."""
    o, la, d = recipe.optim, recipe.launcher, recipe.distill
    tokens_per_step = o.per_device_train_batch_size * o.gradient_accumulation_steps * la.num_processes * \
        recipe.task.max_length
    ps, pt = matmul_params(student), matmul_params(teacher)
    n = recipe.sft.num_checkpoints
    train_tokens = rows * recipe.task.max_length
    out = {
        "sft-teacher": 6 * pt * steps["sft-teacher"] * tokens_per_step,
        "sft-student": 6 * ps * steps["sft-student"] * tokens_per_step,
    }
    if any(METHODS[m].aw for m in d.methods):
        out["aw-table"] = 2 * (ps + n * pt) * train_tokens
    cached = d.teacher_signal == "cached"
    if cached:
        out["signals"] = 2 * n * pt * train_tokens
    per_token = 6 * ps + (0 if cached else 2 * pt)
    out[f"distill ({len(d.methods)} methods)"] = len(d.methods) * steps["distill (each method)"] * tokens_per_step \
        * per_token
    return out


def format_time_estimate(recipe: Recipe, rows: int, steps: dict[str, int], student: Arch, teacher: Arch) -> list[str]:
    """Lines of the plan's time estimate: FLOPs per stage and GPU-hours / wall hours per GPU type."""
    flops = stage_flops(recipe, rows, steps, student, teacher)
    total = sum(flops.values())
    world = recipe.launcher.num_processes
    lines = [f"time (model FLOPs with every row at {recipe.task.max_length} tokens, at an assumed MFU of "
             f"{ASSUMED_MFU:.0%} (ours; benchmarks/gpu_check.sh measures it); not included: evaluation, "
             "checkpoint saves, small-batch ZeRO-3 overheads):"]
    lines += [f"  {k:24} {v:10.3g} FLOPs" for k, v in flops.items()]
    for gpu, peak in GPU_PEAK_TFLOPS.items():
        hours = total / (peak * 1e12 * ASSUMED_MFU) / 3600
        lines.append(f"  {gpu}: {hours:.2f} GPU-hours, {hours / world:.2f} h wall on {world} GPU(s)")
    return lines
