"""Domain SFT stage: `distillkit-scd sft RECIPE --role teacher|student`.

Fine-tunes the role's base model with TRL's SFTTrainer machinery (our `DistillationTrainer` with no
teacher: plain CE on assistant tokens, chunked over the vocabulary) and saves N evenly spaced checkpoints
— step_j = round(j·S/N) for j = 1..N, the last one the final model — each evaluated on the validation
split. `manifest.json` lists them (index, step, epoch, path, validation loss) and names p(best), the
checkpoint with the lowest validation loss. Re-running resumes from the newest trainer checkpoint.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from distillkit_scd.config import Recipe
from distillkit_scd.data.collate import DistillationCollator
from distillkit_scd.evaluation.selection import selection_split
from distillkit_scd.models.checkpoints import (
    CheckpointEntry,
    check_resume_checkpoint,
    last_checkpoint,
    write_manifest,
)
from distillkit_scd.pipeline.workspace import Workspace, save_resolved_recipe
from distillkit_scd.training.callbacks import SaveAtStepsCallback, StepLossCallback
from distillkit_scd.training.training_args import build_sft_config

logger = logging.getLogger(__name__)


def world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def steps_per_epoch(num_rows: int, recipe: Recipe) -> int:
    o = recipe.optim
    return max(1, math.ceil(num_rows / (o.per_device_train_batch_size * world_size()) / o.gradient_accumulation_steps))


def evenly_spaced_steps(total_steps: int, n: int) -> list[int]:
    """round(j·S/N) for j = 1..N; raises when there are fewer steps than checkpoints."""
    if total_steps < n:
        raise ValueError(f"sft.num_checkpoints: {n} checkpoints need at least {n} optimizer steps, the run has "
                         f"{total_steps}; train longer or lower num_checkpoints")
    return [round(j * total_steps / n) for j in range(1, n + 1)]


def run_sft(recipe: Recipe, role: str) -> Path:
    """Fine-tune `role` on the task's train split; returns its folder (with manifest.json)."""
    if role not in ("teacher", "student"):
        raise ValueError(f"--role: expected teacher or student, got {role!r}")
    from distillkit_scd.training.trainer import DistillationTrainer

    ws = Workspace(recipe)
    out = ws.sft_dir(role)
    save_resolved_recipe(recipe, out)
    tokenizer = ws.tokenizer()
    train, val = ws.tokenized_splits(tokenizer)
    role_cfg = getattr(recipe.sft, role)
    per_epoch = steps_per_epoch(len(train), recipe)
    total = math.ceil(role_cfg.num_train_epochs * per_epoch)
    n = recipe.sft.num_checkpoints
    save_steps = evenly_spaced_steps(total, n)
    logger.info("SFT %s: %d rows, %d steps/epoch, %d steps, checkpoints at %s", role, len(train), per_epoch, total,
                save_steps)
    args = build_sft_config(recipe, out, role_cfg.learning_rate or recipe.optim.learning_rate, max_steps=total,
                            prediction_loss_only=True)
    saver = SaveAtStepsCallback(save_steps, evaluate=val is not None)
    model = ws.load_base(role)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                  processing_class=tokenizer, data_collator=DistillationCollator(tokenizer.pad_token_id),
                                  callbacks=[saver])
    trainer.add_callback(StepLossCallback(trainer, recipe.optim.nonfinite_loss, recipe.optim.max_nonfinite_steps))
    resume = last_checkpoint(out)
    if resume:
        check_resume_checkpoint(resume)
        logger.info("SFT %s: resuming from %s", role, resume)
    trainer.train(resume_from_checkpoint=resume)
    if not trainer.is_world_process_zero():  # the main process scores and writes; the others are done
        return out
    losses = eval_loss_history(trainer, saver.eval_losses)
    scores = None
    if recipe.sft.select_by == "val_score" and _scores_generations(recipe):
        del trainer, model  # free the training copy before loading checkpoints one by one
        scores = checkpoint_scores(recipe, out, save_steps, tokenizer)
    write_checkpoint_manifest(out, save_steps, per_epoch, losses, scores=scores, split=selection_split(recipe))
    return out


def checkpoint_scores(recipe: Recipe, out: Path, save_steps: list[int], tokenizer) -> list[float]:
    """The selection score (`selection.primary_score`) of each saved checkpoint, by generation, scored
    with the tokenizer and chat template the model was trained with."""
    import gc

    from distillkit_scd.evaluation.selection import primary_score
    from distillkit_scd.evaluation.stage import score_checkpoints

    gc.collect()
    try:  # after a DeepSpeed ZeRO-3 run, models loaded from here on must not be partitioned
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    except ImportError:
        pass
    metrics = score_checkpoints(recipe, out, [str(out / f"checkpoint-{s}") for s in save_steps], tokenizer)
    return [primary_score(recipe.task.name, m, recipe.task.options) for m in metrics]


def _scores_generations(recipe: Recipe) -> bool:
    """False for a loss-only metric (chat `none`): p(best) then falls back to the validation loss."""
    from distillkit_scd.evaluation.scoring import scoring_for

    return scoring_for(recipe.task.name, recipe.task.options).needs_generation


def eval_loss_history(trainer, eval_losses: dict[int, float]) -> dict[int, float]:
    """Validation loss per step; those of checkpoints saved before a resume come from the log history."""
    history = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    history.update(eval_losses)
    return history


def write_checkpoint_manifest(out: Path, save_steps: list[int], per_epoch: int, losses: dict[int, float],
                              scores: list[float] | None = None, split: str = "validation") -> Path:
    """Manifest of the saved checkpoints. p(best): the highest `scores` when given, else the lowest loss,
    else (no selection split) the final checkpoint; ties to the earlier checkpoint (`selection.best_index`).
    """
    from distillkit_scd.evaluation.selection import best_index

    entries = []
    for j, step in enumerate(save_steps):
        folder = out / f"checkpoint-{step}"
        if not folder.is_dir():
            raise ValueError(f"{folder}: expected checkpoint missing after training")
        entries.append(CheckpointEntry(index=j, step=step, epoch=step / per_epoch, path=str(folder),
                                       val_loss=losses.get(step), val_score=None if scores is None else scores[j]))
    if scores is not None:
        best, selected_by = best_index(scores), f"highest task score on the {split} split (val_score)"
    elif all(e.val_loss is not None for e in entries):
        best = best_index([e.val_loss for e in entries], higher_is_better=False)
        selected_by = f"lowest loss on the {split} split (val_loss)"
    else:
        best, selected_by = len(entries) - 1, "final checkpoint (no selection split)"
    logger.info("checkpoints (1-based) %s; p(best) = checkpoint %d (%s)",
                [(j + 1, e.step, e.val_loss, e.val_score) for j, e in enumerate(entries)], best + 1, selected_by)
    return write_manifest(out, entries, best, selected_by)
