"""Distillation stage: `distillkit-scd distill RECIPE --method td|taid|cd|scd|scd_aw`.

The student starts from its SFT p(best); every method shares the CD infrastructure (paper): N stages of
T optimizer steps, the optimizer reset at every stage (the LR schedule runs once over N×T steps, or
restarts per stage with `distill.lr_schedule: per_stage`), a checkpoint saved (and its loss on the
selection split recorded) at every stage end. What differs is the teacher and the per-token weight
(each method is one row of `methods.METHODS`):

| method | teacher per stage              | weight w in w·KL + (1−w)·CE |
|--------|--------------------------------|-----------------------------|
| td     | p(best)                        | α                           |
| taid   | p(best), target p_t, t adaptive | α                           |
| cd     | p(1), …, p(N)                   | α                           |
| scd    | j* = SCD argmin                 | α                           |
| scd_aw | j* = SCD argmin                 | AW^(j*) of the sample       |

Re-running resumes from the newest trainer checkpoint, restoring stage, active checkpoint, TAID state
and the schedule log (`distill_state.json`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from distillkit_scd.config import Recipe
from distillkit_scd.config.methods import method_spec
from distillkit_scd.data.collate import DistillationCollator
from distillkit_scd.evaluation.selection import selection_split
from distillkit_scd.losses import LossSpec, TAIDState
from distillkit_scd.models.checkpoints import best_checkpoint, check_resume_checkpoint, last_checkpoint
from distillkit_scd.pipeline.workspace import Workspace, save_resolved_recipe
from distillkit_scd.schedules.scd_selector import build_schedule, probe_batches
from distillkit_scd.teachers.pool import CheckpointPool
from distillkit_scd.training.callbacks import (
    ExtraStateCallback,
    SaveAtStepsCallback,
    StageCallback,
    StepLossCallback,
)
from distillkit_scd.training.sft import eval_loss_history, steps_per_epoch, write_checkpoint_manifest
from distillkit_scd.training.training_args import build_sft_config
from distillkit_scd.utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)

SCHEDULE_LOG = "schedule_log.json"


def stage_steps(recipe: Recipe, num_train_rows: int) -> int:
    """T in optimizer steps: `distill.steps_per_stage`, else epochs_per_stage × steps per epoch."""
    d = recipe.distill
    if d.steps_per_stage is not None:
        return d.steps_per_stage
    return max(1, math.ceil(d.epochs_per_stage * steps_per_epoch(num_train_rows, recipe)))


def teacher_rows(trainer, schedule, probes: list[dict]) -> dict[str, int]:
    """Rows the teacher ran on in this stage, by purpose (summed per checkpoint pass): train steps, validation
    loss, SCD's probe cache (N passes over the probe rows unless read from cached signals)."""
    selector = getattr(schedule, "selector", None)
    probe_rows = sum(b["labels"].shape[0] for b in probes)
    return {"train": trainer.teacher_forward_rows - trainer.teacher_eval_rows, "validation": trainer.teacher_eval_rows,
            "scd_probe": selector.teacher_passes * probe_rows if selector is not None else 0}


def loss_spec(method: str, d) -> LossSpec:
    """The compound loss of a method: α·KL + (1−α)·CE; TAID's term in KL's place, mixed with CE at
    `distill.taid.ce_weight` when set (0 = the official TAID code's TAID-only loss)."""
    spec = method_spec(method)
    alpha = d.alpha
    if spec.taid and d.taid.ce_weight is not None:
        alpha = 1.0 - d.taid.ce_weight
    return LossSpec(divergence=spec.divergence(d.divergence), temperature=d.temperature, alpha=alpha,
                    chunk_size=d.chunk_size)


def attach_aw(train, table, num_checkpoints: int):
    """Add each row's AW for every checkpoint as column `aw` (N floats), looked up by sample id."""
    weights = table.weights_for(list(train["id"]))
    if weights.shape[1] != num_checkpoints:
        raise ValueError(f"AW table has {weights.shape[1]} checkpoint columns, the teacher has {num_checkpoints}")
    return train.add_column("aw", weights.tolist())


def run_distill(recipe: Recipe, method: str) -> Path:
    """Distil the student with `method`; returns its folder (stage checkpoints, manifest, schedule log)."""
    spec = method_spec(method)  # ValueError naming the methods for an unknown one
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.training.trainer import DistillationTrainer

    ws = Workspace(recipe)
    d = recipe.distill
    out = ws.distill_dir(method)
    save_resolved_recipe(recipe, out)
    tokenizer = ws.tokenizer()
    train, val = ws.tokenized_splits(tokenizer)
    collator = DistillationCollator(tokenizer.pad_token_id)
    pool = CheckpointPool(ws.sft_dir("teacher"))
    n = pool.num_checkpoints
    if spec.aw:
        from distillkit_scd.teachers.aw_table import TABLE_JSON, AWTable

        train = attach_aw(train, AWTable.load(ws.aw_dir() / TABLE_JSON), n)

    T = stage_steps(recipe, len(train))
    total = n * T
    stage_ends = [T * (i + 1) for i in range(n)]
    logger.info("distill %s: N=%d stages × T=%d steps = %d steps; teacher p(best) = checkpoint %d (1-based)",
                method, n, T, total, pool.best_index + 1)

    m = recipe.models
    student = load_model(str(best_checkpoint(ws.sft_dir("student"))), m.dtype, m.trust_remote_code,
                         m.attn_implementation)
    teacher = pool.load_model(pool.best_index, m.dtype, m.trust_remote_code, m.attn_implementation)

    signals = None
    if d.teacher_signal == "cached":
        from distillkit_scd.teachers.signal_cache import SignalCache, signal_paths

        paths = signal_paths(ws.root / "signals", n)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"distill.teacher_signal is 'cached' but {missing[0]} is missing; run the "
                             "`signals` stage first (distillkit-scd signals RECIPE)")
        signals = [SignalCache.load(p) for p in paths]
    loss = loss_spec(method, d)
    taid = TAIDState.from_config(d.taid) if spec.taid else None
    args = build_sft_config(recipe, out, d.learning_rate or recipe.optim.learning_rate, max_steps=total,
                            prediction_loss_only=True)
    saver = SaveAtStepsCallback(stage_ends, evaluate=val is not None)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train, eval_dataset=val,
                                  processing_class=tokenizer, data_collator=collator, callbacks=[saver],
                                  teacher_model=teacher, loss_spec=loss, use_aw=spec.aw,
                                  taid_state=taid, steps_per_stage=T if d.lr_schedule == "per_stage" else None,
                                  teacher_signals=signals, fused_loss=d.fused_loss,
                                  compile_loss=d.compile_loss)
    probes = probe_batches(train, collator, d.scd.probe_size, recipe.seed, recipe.optim.per_device_train_batch_size)
    schedule = build_schedule(spec.schedule, pool, trainer.teacher_model_module, probes,
                              top_k=d.cache_top_k if signals else d.scd.top_k, chunk_size=d.chunk_size, signals=signals)
    stages = StageCallback(trainer, T, schedule=schedule, pool=pool, reset_optimizer=d.reset_optimizer)
    extra = ExtraStateCallback(trainer, stages)
    trainer.add_callback(stages)
    trainer.add_callback(extra)
    trainer.add_callback(StepLossCallback(trainer, recipe.optim.nonfinite_loss, recipe.optim.max_nonfinite_steps))

    resume = last_checkpoint(out)
    if resume:
        check_resume_checkpoint(resume)
        logger.info("distill %s: resuming from %s", method, resume)
        extra.restore(resume)
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        atomic_write_json(out / SCHEDULE_LOG, {"method": method, "steps_per_stage": T, "stages": stages.log,
                                               "teacher_signal": d.teacher_signal,
                                               "teacher_forward_rows": trainer.teacher_forward_rows,
                                               "teacher_rows": teacher_rows(trainer, schedule, probes)})
        write_checkpoint_manifest(out, stage_ends, max(1, steps_per_epoch(len(train), recipe)),
                                  eval_loss_history(trainer, saver.eval_losses), split=selection_split(recipe))
    return out
