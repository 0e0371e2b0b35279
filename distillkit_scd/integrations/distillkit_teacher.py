"""`distillkit-scd distillkit-teacher CONFIG --checkpoints N`: the teacher's domain SFT on a DistillKit
config's own data, saving N evenly spaced checkpoints and the `manifest.json` our CD / SCD schedules read.

It reads the same YAML as the distillation run: the teacher (`teacher.path`, `teacher.kwargs`), the
datasets (`dataset.train_dataset`, and `eval_dataset` for choosing p(best)), `sequence_length` and
`training_args` (batch size, learning rate, epochs, precision...), and `distillkit_scd.labels`. Rows are
loaded and labelled exactly as the distillation run will see them (`distillkit_data.load_rows`). The
training is our pipeline's SFT stage (`training/sft.py`): plain CE on the label tokens, checkpoints at steps
round(j·S/N), j = 1..N, each evaluated on `eval_dataset` when there is one; p(best) is the checkpoint
with the lowest loss on it (else the last: a DistillKit dataset has no task metric to score generations
with, so our pipeline's `val_score` selection does not apply). The manifest goes where the config's
`schedule.manifest` points (else OUTPUT_PATH/teacher_sft) so the CD / SCD run finds it; re-running
resumes from the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

from distillkit_scd.config import RecipeError

logger = logging.getLogger(__name__)

CONTROLLED = {"output_dir", "save_strategy", "eval_strategy", "remove_unused_columns", "dataset_kwargs",
              "packing", "max_length", "max_steps", "num_train_epochs", "learning_rate", "resume_from_checkpoint",
              "save_steps", "eval_steps", "prediction_loss_only"}
"""`training_args` keys this command sets itself (the rest are passed to `trl.SFTConfig` as they are)."""


def default_output(run_config, settings) -> Path:
    """The folder the manifest goes to: the config's `schedule.manifest` (its folder), else OUTPUT_PATH/teacher_sft."""
    manifest = settings.schedule.manifest
    if manifest:
        path = Path(manifest)
        return path.parent if path.suffix == ".json" else path
    return Path(run_config.output_path) / "teacher_sft"


def sft_args(run_config, out: Path, total_steps: int, learning_rate: float | None):
    """`trl.SFTConfig` from the config's training_args plus what this command controls.

    Raises:
        RecipeError: a training_args key TRL's SFTConfig does not have.
    """
    import torch
    from trl import SFTConfig

    kwargs = {k: v for k, v in run_config.training_args.items() if k not in CONTROLLED}
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise RecipeError(f"training_args.{unknown[0]}: not a field of trl.SFTConfig in this TRL version")
    kwargs.update(output_dir=str(out), max_steps=total_steps, save_strategy="no", eval_strategy="no",
                  remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, packing=False,
                  prediction_loss_only=True,
                  max_length=run_config.training_args.get("max_length", run_config.sequence_length))
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
        kwargs.setdefault("bf16", False)  # TRL 0.25 defaults bf16 on, which autocasts CPU matmuls
    return SFTConfig(**kwargs)


def run_teacher_sft(config_path: str | Path, num_checkpoints: int, out: str | Path | None = None,
                    epochs: float | None = None, learning_rate: float | None = None) -> Path:
    """Fine-tune the config's teacher on its train data; returns the written manifest's path.

    Raises:
        RecipeError: a bad config, an offline teacher, or fewer steps than checkpoints.
    """
    import transformers

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.integrations.distillkit import load_config
    from distillkit_scd.integrations.distillkit_checks import validate_manifest
    from distillkit_scd.integrations.distillkit_data import load_rows
    from distillkit_scd.models.checkpoints import check_resume_checkpoint, last_checkpoint
    from distillkit_scd.training.callbacks import SaveAtStepsCallback, StepLossCallback
    from distillkit_scd.training.sft import (
        eval_loss_history,
        evenly_spaced_steps,
        world_size,
        write_checkpoint_manifest,
    )
    from distillkit_scd.training.trainer import DistillationTrainer

    if num_checkpoints < 1:
        raise RecipeError(f"--checkpoints: expected an integer >= 1, got {num_checkpoints}")
    run_config, settings, _ = load_config(config_path, check_files=False)  # the manifest is what we write
    if run_config.teacher.kind != "hf":
        raise RecipeError(f"{config_path}: teacher.kind: expected hf (a model to fine-tune), got "
                          f"{run_config.teacher.kind!r}")
    out = Path(out or default_output(run_config, settings)).resolve()
    tokenizer, train, val = load_rows(run_config, settings.labels)
    ta = run_config.training_args
    per_step = ta.get("per_device_train_batch_size", 8) * world_size() * ta.get("gradient_accumulation_steps", 1)
    per_epoch = max(1, math.ceil(len(train) / per_step))
    if epochs is None and ta.get("max_steps", -1) > 0:
        total = int(ta["max_steps"])
    else:
        total = math.ceil((epochs if epochs is not None else ta.get("num_train_epochs", 3.0)) * per_epoch)
    try:
        save_steps = evenly_spaced_steps(total, num_checkpoints)
    except ValueError as err:
        raise RecipeError(f"{config_path}: {err}".replace("sft.num_checkpoints", "--checkpoints")) from None
    logger.info("teacher SFT: %d rows, %d steps/epoch, %d steps, checkpoints at %s -> %s", len(train), per_epoch,
                total, save_steps, out)
    args = sft_args(run_config, out, total, learning_rate)
    model = transformers.AutoModelForCausalLM.from_pretrained(run_config.teacher.path,
                                                              **(run_config.teacher.kwargs or {}))
    saver = SaveAtStepsCallback(save_steps, evaluate=val is not None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = DistillationTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                  processing_class=tokenizer, data_collator=DistillationCollator(pad),
                                  callbacks=[saver])
    trainer.add_callback(StepLossCallback(trainer))
    resume = last_checkpoint(out)
    if resume:
        check_resume_checkpoint(resume)
        logger.info("teacher SFT: resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    if not trainer.is_world_process_zero():  # the main process writes the manifest
        return out / "manifest.json"
    manifest = write_checkpoint_manifest(out, save_steps, per_epoch, eval_loss_history(trainer, saver.eval_losses),
                                         split="eval_dataset")
    validate_manifest(manifest, "distillkit-teacher")  # what we write is what we document
    return manifest
