"""Recipe → TRL `SFTConfig`, on both supported TRL lines (0.25 and 1.x).

The recipe's `optim` section is the paper's shared infrastructure (AdamW β 0.9/0.95, clip 1.0, cosine
with 10 % warm-up); `training_args` from the recipe is applied last, and a key TRL does not know is a
clear error rather than a silent typo.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from distillkit_scd.config import Recipe


def gradient_checkpointing(recipe: Recipe) -> bool:
    """Whether the recipe's training stages recompute activations: `training_args.gradient_checkpointing`
    (or its transformers-5 name `activation_checkpointing`); off when neither is set (ours, not TRL's default)."""
    ta = recipe.training_args
    return bool(ta.get("activation_checkpointing", ta.get("gradient_checkpointing", False)))


def build_sft_config(recipe: Recipe, output_dir: str | Path, learning_rate: float, num_train_epochs: float = 1.0,
                     max_steps: int = -1, **overrides):
    """Build a `trl.SFTConfig` for one training stage.

    Args:
        recipe: the validated recipe.
        output_dir: the stage's trainer folder (checkpoints for resume live here).
        learning_rate: the stage's peak learning rate.
        num_train_epochs / max_steps: the stage's length (max_steps > 0 wins, as in transformers).
        overrides: stage-specific fields (e.g. eval settings), applied before `recipe.training_args`.
    Raises:
        ValueError: a `training_args` key that this TRL version's SFTConfig does not have.
    """
    from trl import SFTConfig

    o = recipe.optim
    mp = recipe.launcher.mixed_precision
    kwargs = dict(
        output_dir=str(output_dir),
        seed=recipe.seed,
        data_seed=recipe.seed,
        per_device_train_batch_size=o.per_device_train_batch_size,
        per_device_eval_batch_size=o.per_device_train_batch_size,
        gradient_accumulation_steps=o.gradient_accumulation_steps,
        learning_rate=learning_rate,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        max_grad_norm=o.max_grad_norm,
        lr_scheduler_type=o.lr_scheduler_type,
        warmup_ratio=o.warmup_ratio,
        logging_steps=o.logging_steps,
        num_train_epochs=num_train_epochs,
        max_steps=max_steps,
        bf16=mp == "bf16",
        fp16=mp == "fp16",
        deepspeed=_deepspeed_for_transformers(recipe),
        report_to="none",
        remove_unused_columns=False,  # our collator needs `aw` and `sample_index`
        save_strategy="no",  # checkpoints are requested by our callbacks at the steps that matter
        eval_strategy="no",
        save_only_model=False,
        max_length=recipe.task.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},  # rows are tokenised by data/formatting.py
        disable_tqdm=False,
    )
    import torch

    if not torch.cuda.is_available():
        # A CPU-only machine: the processes of an `accelerate launch` must form one job over gloo (otherwise
        # each trains alone on the same batches; the trainer refuses that). DDP needs use_cpu; DeepSpeed
        # (from the recipe or `accelerate launch --use_deepspeed`) needs the gloo backend instead.
        if recipe.launcher.deepspeed_config or _accelerate_deepspeed():
            if mp != "no":  # transformers refuses it ("Your setup doesn't support bf16/gpu"); say what to change
                raise ValueError(f"launcher.mixed_precision: {mp} with DeepSpeed needs a GPU; on a CPU-only machine "
                                 "set launcher.mixed_precision: \"no\" (DDP runs bf16 on CPU, DeepSpeed does not)")
            kwargs["ddp_backend"] = "gloo"
        else:
            kwargs["use_cpu"] = True
    kwargs.update(overrides)
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    for key, value in recipe.training_args.items():
        if key not in known:
            close = sorted(k for k in known if k.split("_")[0] == key.split("_")[0])[:5]
            raise ValueError(f"training_args.{key}: not a field of trl.SFTConfig in this TRL version"
                             + (f" (similar: {', '.join(close)})" if close else ""))
        kwargs[key] = value
    # Gradient checkpointing only when the recipe asks (TRL's SFTConfig defaults it to on, ~30 % slower steps).
    # transformers 5 renames it activation_checkpointing; setting both names keeps one value and no warning.
    kwargs["gradient_checkpointing"] = gradient_checkpointing(recipe)
    if "activation_checkpointing" in known:
        kwargs["activation_checkpointing"] = kwargs["gradient_checkpointing"]
    # warmup_ratio is deprecated in transformers 5 in favour of a float warmup_steps; keep one of them.
    if "warmup_ratio" not in known:
        kwargs["warmup_steps"] = kwargs.pop("warmup_ratio")
    return SFTConfig(**kwargs)


def _accelerate_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def _deepspeed_for_transformers(recipe: Recipe) -> str | None:
    """The DeepSpeed JSON to hand to transformers itself: none when accelerate launched the process with
    DeepSpeed (its plugin carries the JSON and fills "auto" once the process group exists; transformers'
    own copy is filled earlier, with world size 1 on CPU, and fails DeepSpeed's batch assertion), the
    recipe's otherwise (e.g. a plain `python -m distillkit_scd` on one GPU, or torchrun).

    Raises:
        ValueError: accelerate launched with another DeepSpeed JSON than the recipe's, or several CPU processes
            without accelerate's DeepSpeed launch (they would not form one job).
    """
    wanted = recipe.launcher.deepspeed_config
    if _accelerate_deepspeed():
        given = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if wanted and given and Path(given).resolve() != Path(wanted).resolve():
            raise ValueError(f"launcher.deepspeed_config is {wanted} but accelerate was launched with "
                             f"--deepspeed_config_file {given}; launch with the recipe's file (distillkit-scd run does)")
        return None
    import torch

    if wanted and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and not torch.cuda.is_available():
        raise ValueError(f"launcher.deepspeed_config {wanted}: several CPU processes need accelerate's DeepSpeed launch "
                         f"(`accelerate launch --use_deepspeed --deepspeed_config_file {wanted} …`, as "
                         "`distillkit-scd run` does)")
    return wanted
