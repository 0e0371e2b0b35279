"""`distillkit-scd plan RECIPE`: the stages, their optimizer steps, GPU memory per device and a time estimate
(`plan_time`) — before
anything is downloaded or launched.

Step counts use the task's train split when its data is on disk, else the documented size on the
task's registry entry (`TaskSpec.train_rows`).
Memory comes from each model's architecture (a built-in table keyed by Hub id, or a local
`config.json`; never weights) and is a planning estimate, not a measurement:

- parameters: embeddings V·H (+ an untied LM head V·H), per layer q/o 2·H·(heads·d), k/v
  2·H·(kv_heads·d), MLP 3·H·I, two RMSNorms 2·H, plus the final norm H;
- training: 16 bytes per trained parameter — 16-bit weights 2 + gradients 2 + AdamW fp32 master, m, v
  12 (fp32 weights: 4 + 4 + 8, the same 16) — divided by the world size under ZeRO-3; ZeRO-3 offload
  moves the optimizer share (and with `offload_param` the weights) to CPU;
- activations per device: B·L·(20·H + 8·I)·(bytes/2) per layer (SwiGLU MLP, flash/SDPA attention,
  no L² term), 2·B·L·H per layer with gradient checkpointing (as `training_args` sets it: off unless the
  recipe says so);
- the loss never builds (B, L, V) logits (`chunked_loss`): it holds (chunk, V) fp32 buffers — two for CE,
  three with a teacher (`chunk_kernel`), chunk = min(distill.chunk_size, B·L) — plus the teacher's final
  hidden states B·L·H_t during distillation;
- the distillation teacher is frozen: weights only, sharded by ZeRO-3 like the student.

`tests/test_plan.py` compares the total with the measured peak of real trainer steps on CPU (±25 %).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillkit_scd.config import Recipe
from distillkit_scd.training.training_args import gradient_checkpointing

GIB = 1024**3

# Architecture fields of the models the paper uses (from their public config.json files).
_LLAMA3_VOCAB = 128256
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B-Instruct": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                                             num_attention_heads=32, num_key_value_heads=8,
                                             vocab_size=_LLAMA3_VOCAB, tie_word_embeddings=False),
    "meta-llama/Llama-3.2-3B-Instruct": dict(hidden_size=3072, num_hidden_layers=28, intermediate_size=8192,
                                             num_attention_heads=24, num_key_value_heads=8,
                                             vocab_size=_LLAMA3_VOCAB, tie_word_embeddings=True),
    "meta-llama/Llama-3.2-1B-Instruct": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192,
                                             num_attention_heads=32, num_key_value_heads=8,
                                             vocab_size=_LLAMA3_VOCAB, tie_word_embeddings=True),
}
for _name in list(KNOWN_CONFIGS):  # base models share the instruct models' architecture
    KNOWN_CONFIGS[_name.removesuffix("-Instruct")] = KNOWN_CONFIGS[_name]

_SFT_CHUNK = 1024  # `LossSpec`'s default chunk: the SFT stages' loss
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Arch:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None

    @property
    def params(self) -> int:
        """Parameter count of a Llama-style decoder (see the module docstring)."""
        h, d = self.hidden_size, self.head_dim or self.hidden_size // self.num_attention_heads
        attn = 2 * h * self.num_attention_heads * d + 2 * h * self.num_key_value_heads * d
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_hidden_layers * layer + h


def model_arch(ref: str, recipe: Recipe | None = None, role: str | None = None) -> Arch | None:
    """The architecture of a model reference from a local `config.json` or the built-in table; None if
    unknown (a Hub id not in the table: nothing is downloaded)."""
    path = Path(ref).expanduser()
    if ref.startswith("tiny:") and recipe is not None and role is not None:
        from distillkit_scd.models.refs import resolve_model_path

        path = Path(resolve_model_path(recipe, role, build=False))
    cfg: dict[str, Any] | None = None
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    elif ref in KNOWN_CONFIGS:
        cfg = KNOWN_CONFIGS[ref]
    if cfg is None:
        return None
    fields = {k: cfg[k] for k in Arch.__dataclass_fields__ if k in cfg}
    try:
        return Arch(**fields)
    except TypeError as err:
        raise ValueError(f"{ref}: config.json lacks a field the estimate needs ({err})") from None


@dataclass(frozen=True)
class Parallel:
    world_size: int
    zero_stage: int
    offload_optimizer: bool
    offload_param: bool
    num_machines: int = 1


def parallel_setup(recipe: Recipe) -> Parallel:
    """World size and ZeRO stage/offload from the launcher section and its DeepSpeed JSON, if local."""
    la = recipe.launcher
    stage, off_opt, off_param, machines = 0, False, False, 1
    ds_path = la.deepspeed_config
    if la.accelerate_config and Path(la.accelerate_config).is_file():
        import yaml

        acc = yaml.safe_load(Path(la.accelerate_config).read_text(encoding="utf-8")) or {}
        ds = acc.get("deepspeed_config") or {}
        machines = int(acc.get("num_machines", 1) or 1)
        stage = int(ds.get("zero_stage", 0) or 0)
        off_opt = ds.get("offload_optimizer_device", "none") not in ("none", None)
        off_param = ds.get("offload_param_device", "none") not in ("none", None)
        ds_path = ds_path or ds.get("deepspeed_config_file")
    if ds_path and Path(ds_path).is_file():
        zero = json.loads(Path(ds_path).read_text(encoding="utf-8")).get("zero_optimization", {})
        stage = int(zero.get("stage", stage))
        off_opt = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
        off_param = zero.get("offload_param", {}).get("device", "none") not in ("none", None)
    return Parallel(la.num_processes, stage, off_opt, off_param, machines)


def train_rows(recipe: Recipe) -> tuple[int | None, str]:
    """(train rows, where the number comes from): the local data if it loads, else the documented size."""
    from distillkit_scd.tasks import get_task, load_task

    try:
        splits = load_task(recipe.task.name, recipe.task.source, **{"seed": recipe.seed, **recipe.task.options})
        return len(splits["train"]), "local data"
    except (ValueError, OSError, ImportError):
        n = get_task(recipe.task.name).train_rows
        return n, ("documented size" if n is not None else "unknown")


def step_counts(recipe: Recipe, rows: int) -> dict[str, int]:
    """Optimizer steps of each training stage (the same arithmetic as training/sft.py and training/distill.py)."""
    o = recipe.optim
    per_epoch = max(1, math.ceil(rows / (o.per_device_train_batch_size * recipe.launcher.num_processes)
                                 / o.gradient_accumulation_steps))
    d = recipe.distill
    T = d.steps_per_stage if d.steps_per_stage is not None else max(1, math.ceil(d.epochs_per_stage * per_epoch))
    return {
        "steps_per_epoch": per_epoch,
        "sft-teacher": max(1, math.ceil(recipe.sft.teacher.num_train_epochs * per_epoch)),
        "sft-student": max(1, math.ceil(recipe.sft.student.num_train_epochs * per_epoch)),
        "T": T,
        "distill (each method)": recipe.sft.num_checkpoints * T,
    }


def _activation_bytes(a: Arch, batch: int, length: int, dtype_bytes: int, checkpointing: bool) -> float:
    tokens = batch * length
    per_layer = 2 * tokens * a.hidden_size if checkpointing else \
        tokens * (20 * a.hidden_size + 8 * a.intermediate_size) * dtype_bytes / 2
    return a.num_hidden_layers * per_layer


def _loss_buffer_bytes(a: Arch, tokens: int, chunk_size: int, with_teacher: bool) -> float:
    """The chunked loss's fp32 (chunk, V) buffers: logits/gradient and scratch, plus the teacher's."""
    return (3 if with_teacher else 2) * min(chunk_size, tokens) * a.vocab_size * 4


def memory_estimate(recipe: Recipe, student: Arch, teacher: Arch | None, par: Parallel) -> dict[str, dict[str, float]]:
    """GiB per device for the training stages: {stage: {part: GiB}} (see the module docstring)."""
    wb = _DTYPE_BYTES[recipe.models.dtype]
    if recipe.launcher.mixed_precision in ("bf16", "fp16") and wb == 4:
        wb_act = 2  # autocast: activations in 16 bit, weights kept in fp32
    else:
        wb_act = wb
    shard = par.world_size if par.zero_stage == 3 else 1
    opt_shard = par.world_size if par.zero_stage >= 1 else 1
    grad_shard = par.world_size if par.zero_stage >= 2 else 1
    B, L = recipe.optim.per_device_train_batch_size, recipe.task.max_length
    ckpt = gradient_checkpointing(recipe)
    chunk = recipe.distill.chunk_size

    def trained(a: Arch, with_teacher: bool = False) -> dict[str, float]:
        p = a.params
        opt_per_param = 12 if wb == 2 else 8
        return {
            "weights": 0.0 if par.offload_param else p * wb / shard / GIB,
            "gradients": p * wb / grad_shard / GIB,
            "optimizer": 0.0 if par.offload_optimizer else p * opt_per_param / opt_shard / GIB,
            "activations": _activation_bytes(a, B, L, wb_act, ckpt) / GIB,
            "loss buffers": _loss_buffer_bytes(a, B * L, chunk if with_teacher else _SFT_CHUNK, with_teacher) / GIB,
        }

    out: dict[str, dict[str, float]] = {}
    if teacher is not None:
        out["sft-teacher"] = trained(teacher)
    out["sft-student"] = trained(student)
    distill = dict(trained(student, with_teacher=True))
    if teacher is not None:
        distill["teacher weights"] = 0.0 if par.offload_param else teacher.params * wb / shard / GIB
        distill["teacher hidden"] = B * L * teacher.hidden_size * wb_act / GIB
    out["distill"] = distill
    for parts in out.values():
        parts["total"] = sum(parts.values())
    return out


def _count(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def format_plan(recipe: Recipe) -> str:
    """The text `distillkit-scd plan` prints."""
    from distillkit_scd.config.launch import accelerate_command, describe, resolve_launch
    from distillkit_scd.pipeline.run import build_stages

    lines = [f"recipe {recipe.name}: task {recipe.task.name}, output {recipe.output_dir}", "", "stages:"]
    for s in build_stages(recipe):
        prefix = accelerate_command(recipe, s.command[0])
        if "--main_process_port" in prefix:  # a fresh free port per launch; not part of the plan
            at = prefix.index("--main_process_port")
            prefix = prefix[:at] + prefix[at + 2:]
        how = "python" if len(prefix) <= 1 else " ".join(["accelerate launch", *prefix[3:]])
        lines.append(f"  {s.name:26} {how}")
    lines += ["", describe(resolve_launch(recipe))]
    rows, where = train_rows(recipe)
    lines.append("")
    if rows is None:
        lines.append(f"steps: train size of task {recipe.task.name!r} unknown (no local data, no documented size)")
    else:
        steps = step_counts(recipe, rows)
        o, la = recipe.optim, recipe.launcher
        lines.append(f"steps: {rows} train rows ({where}); global batch {o.per_device_train_batch_size} × "
                     f"{o.gradient_accumulation_steps} accumulation × {la.num_processes} processes")
        lines += [f"  {k:24} {v}" for k, v in steps.items()]
        lines.append(f"  distillation total       {len(recipe.distill.methods)} methods × "
                     f"{steps['distill (each method)']} = {len(recipe.distill.methods) * steps['distill (each method)']}")
    student = model_arch(recipe.models.student, recipe, "student")
    teacher = model_arch(recipe.models.teacher, recipe, "teacher")
    par = parallel_setup(recipe)
    lines.append("")
    for role, arch in (("teacher", teacher), ("student", student)):
        ref = getattr(recipe.models, role)
        lines.append(f"{role}: {ref}: " + (f"{_count(arch.params)} parameters, "
                                           f"{arch.params * _DTYPE_BYTES[recipe.models.dtype] / 1e9:.1f} GB of "
                                           f"{recipe.models.dtype} weights" if arch else
                                           ("tiny model not built yet (the first stage builds it)"
                                            if ref.startswith("tiny:") else
                                            "architecture unknown (not in the built-in table, no local config.json)")))
    if student is None:
        lines.append("memory: unknown (student architecture unknown)")
        return "\n".join(lines)
    nodes = f" on {par.num_machines} nodes" if par.num_machines > 1 else ""
    lines.append(f"memory per device (GiB; {par.world_size} process(es){nodes}, ZeRO stage {par.zero_stage}"
                 + (", optimizer offloaded" if par.offload_optimizer else "")
                 + (", parameters offloaded" if par.offload_param else "")
                 + f", gradient checkpointing {'on' if gradient_checkpointing(recipe) else 'off'}; planning estimate):")
    for stage, parts in memory_estimate(recipe, student, teacher, par).items():
        detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if k != "total")
        lines.append(f"  {stage:12} {parts['total']:7.1f}  ({detail})")
    if rows is not None and teacher is not None:
        from distillkit_scd.pipeline.plan_time import format_time_estimate

        lines += [""] + format_time_estimate(recipe, rows, step_counts(recipe, rows), student, teacher)
    return "\n".join(lines)
