"""Small stateful trainer callbacks; what they must remember is saved with every trainer checkpoint.

- `SaveAtStepsCallback`: save (and evaluate) at chosen optimizer steps — the N evenly spaced teacher
  checkpoints, the stage ends of a distillation run.
- `StageCallback`: at each stage start, clear the optimizer state (fresh AdamW) and ask the teacher
  schedule which checkpoint to use, swapping it in place; keeps the schedule log (the paper's Fig. 3).
- `StepLossCallback`: once per optimizer step, stops on (or, if asked, skips and counts) a non-finite
  loss or gradients, and advances TAID's t with the step's loss (the same on every process).
- `ExtraStateCallback`: writes `distill_state.json` into each trainer checkpoint, so a resumed run
  restores the stage, the active checkpoint, the optimizer-reset phase, TAID's state and the log.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from distillkit_scd.models.checkpoints import last_checkpoint
from distillkit_scd.training.trainer_base import ScheduledTrainer, reset_optimizer_state
from distillkit_scd.utils.atomic import atomic_write_json
from distillkit_scd.utils.interrupts import note_step

logger = logging.getLogger(__name__)

STATE_FILE = "distill_state.json"


class SaveAtStepsCallback(TrainerCallback):
    """Request a checkpoint (and an evaluation, whose loss is recorded per step) at the given steps."""

    def __init__(self, steps, evaluate: bool = True):
        self.steps = set(steps)
        self.evaluate = evaluate
        self.eval_losses: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_save = True
            control.should_evaluate = self.evaluate
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self.eval_losses[state.global_step] = float(metrics["eval_loss"])


class StageCallback(TrainerCallback):
    """Stage boundaries every T optimizer steps: optimizer reset and teacher checkpoint choice."""

    def __init__(self, trainer: ScheduledTrainer, steps_per_stage: int, schedule=None, pool=None,
                 reset_optimizer: bool = True):
        self.trainer = trainer
        self.steps_per_stage = steps_per_stage
        self.schedule = schedule
        self.pool = pool
        self.reset_optimizer = reset_optimizer
        self.stage = -1  # last stage started
        self.log: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run: put the logged checkpoint of the current stage back into the teacher.
        if self.stage >= 0 and self.pool is not None:
            self.pool.load_into(self.trainer.teacher_model_module, self.trainer.active_checkpoint)

    def on_step_begin(self, args, state, control, **kwargs):
        stage = state.global_step // self.steps_per_stage
        if stage == self.stage:
            return
        if stage > 0 and self.reset_optimizer and self.trainer.optimizer is not None:
            reset_optimizer_state(self.trainer.optimizer)
        if self.schedule is not None:
            self._choose(stage, state.global_step)
        self.stage = stage

    def _choose(self, stage: int, step: int) -> None:
        done = [e for e in self.log if e["stage"] == stage]
        if done:  # resumed inside a stage whose choice is already logged: reuse it
            chosen = done[0]["chosen"]
        else:
            student = self.trainer.model
            was_training = student.training
            chosen, terms = self.schedule.checkpoint_for_stage(stage, student=student)
            student.train(was_training)
            self.log.append({"stage": stage, "step": step, "chosen": int(chosen), "terms": terms})
            logger.info("stage %d (step %d): teacher checkpoint %d %s", stage + 1, step, chosen + 1,  # 1-based
                        "" if not terms else "; terms " + ", ".join(
                            f"j={t['checkpoint'] + 1}: {t['kl_best']:.4f}+{t['kl_student']:.4f}" for t in terms))
        if self.pool is not None:
            self.pool.load_into(self.trainer.teacher_model_module, chosen)
        self.trainer.active_checkpoint = int(chosen)

    def state_dict(self) -> dict:
        return {"stage": self.stage, "log": self.log}

    def load_state_dict(self, state: dict) -> None:
        self.stage = state.get("stage", -1)
        self.log = state.get("log", [])


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradients; the message names the step, the batch and the last
    good checkpoint (and, in skip mode, how many steps were skipped)."""


class StepLossCallback(TrainerCallback):
    """Once per optimizer step (never per micro-batch, never on eval batches): read the step's loss
    (mean over processes, one host sync), check it and the gradients are finite, and advance TAID's t.

    The check runs just before the optimizer step (`on_pre_optimizer_step`, after gradient clipping).
    A non-finite loss or gradient then either

    - `stop`s the run (default): `NonFiniteLossError` naming the step, the sample ids of its last
      micro-batch and the newest checkpoint on disk (re-running resumes from it). The bad update was not
      applied (under DeepSpeed it was: it steps inside backward), and the weights in memory are not
      saved; or
    - `skip`s the update: every gradient is set to None, so the optimizer step is a no-op for the weights
      and the optimizer state alike (AdamW, like every torch optimizer, leaves a parameter without a
      gradient untouched: no moment update, no step count, no weight decay). The LR schedule and the
      global step still advance (the schedule stays a function of the global step). Each skip is logged
      (step, loss, sample ids) and appended to the trainer's `log_history` as
      `{"step", "nonfinite_skipped": count so far, "nonfinite_loss", "sample_index"}`, which is saved in
      every checkpoint's `trainer_state.json`, so a resumed run continues the count. The logged loss
      parts of that logging window include the skipped step's NaN. Once more than
      `max_nonfinite_steps` steps were skipped, the run stops with `NonFiniteLossError` naming the count.

    Gradients are not checked under fp16 loss scaling (the scaler skips overflowing steps itself) nor
    when they are not held on the parameters (DeepSpeed); `skip` is refused under DeepSpeed, which steps
    the optimizer inside backward, before this callback could stop it.

    Args:
        trainer: a `ScheduledTrainer` (its `pop_step_loss`, `last_step_distill`, `last_batch_ids`, `taid_state`).
        nonfinite (`str`, defaults to `"stop"`): `stop` or `skip` (recipe field `optim.nonfinite_loss`).
        max_nonfinite_steps (`int`, defaults to `10`): skips allowed before stopping anyway.
    """

    def __init__(self, trainer: ScheduledTrainer, nonfinite: str = "stop", max_nonfinite_steps: int = 10):
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"optim.nonfinite_loss: expected stop or skip, got {nonfinite!r}")
        self.trainer = trainer
        self.nonfinite = nonfinite
        self.max_nonfinite_steps = max_nonfinite_steps
        self.skipped = 0  # optimizer steps skipped so far (restored from log_history on resume)
        self._checked: tuple[float, bool] | None = None  # (this step's loss, skipped?) once checked

    def on_train_begin(self, args, state, control, **kwargs):
        if self.nonfinite == "skip" and getattr(self.trainer, "is_deepspeed_enabled", False):
            raise ValueError("optim.nonfinite_loss: 'skip' cannot undo an optimizer step under DeepSpeed (it "
                             "steps inside backward); use 'stop'")
        counts = [e["nonfinite_skipped"] for e in state.log_history if "nonfinite_skipped" in e]
        self.skipped = max(counts, default=0)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._check(args, state, state.global_step + 1, can_skip=True)  # global_step counts finished steps

    def on_step_end(self, args, state, control, **kwargs):
        note_step(state.global_step)  # what an interrupt reports (`interrupts`)
        if self._checked is None:  # no pre-optimizer event on this path: check after the fact (loss only)
            self._check(args, state, state.global_step, can_skip=False)
        loss, skipped = self._checked
        self._checked = None
        if self.trainer.taid_state is not None and not skipped:
            # As the official TAID: t adapts to the step's distillation term (`last_step_distill`, over
            # every process; the total loss when the step added none), and the
            # linear floor's progress counts the steps finished *before* this one (0 at the first).
            term = self.trainer.last_step_distill
            self.trainer.taid_state.update(loss if term is None else term, state.global_step - 1, state.max_steps)

    def _check(self, args, state, step: int, can_skip: bool) -> None:
        loss = self.trainer.pop_step_loss()
        loss_ok = math.isfinite(loss)
        grads_ok = self._grads_finite() if can_skip else True
        if loss_ok and grads_ok:
            self._checked = (loss, False)
            return
        what = f"non-finite loss {loss}" if not loss_ok else f"non-finite gradients (loss {loss})"
        ids = self.trainer.last_batch_ids
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        where = (f"at optimizer step {step}; last micro-batch rows (sample_index) {ids}; last good checkpoint: "
                 f"{last_checkpoint(Path(args.output_dir)) or 'none'}")
        if self.nonfinite == "stop" or not can_skip:
            raise NonFiniteLossError(f"{what} {where}. Lower the learning rate or check the data, then re-run "
                                     "the same command to resume (or set optim.nonfinite_loss: skip).")
        self.skipped += 1
        if self.skipped > self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.skipped} optimizer steps had a non-finite loss or gradients, more than "
                f"optim.max_nonfinite_steps={self.max_nonfinite_steps}; the last: {what} {where}. "
                "Lower the learning rate or check the data, then re-run the same command to resume.")
        self.trainer.model.zero_grad(set_to_none=True)  # the optimizer step that follows changes nothing
        logger.warning("skipped optimizer step %d: %s; rows (sample_index) %s; %d skipped so far (limit %d)",
                       step, what, ids, self.skipped, self.max_nonfinite_steps)
        state.log_history.append({"step": step, "nonfinite_skipped": self.skipped, "nonfinite_loss": str(loss),
                                  "sample_index": ids})
        self._checked = (loss, True)

    def _grads_finite(self) -> bool:
        """All gradients finite, on every process (one reduction); True where they cannot be checked."""
        accelerator = getattr(self.trainer, "accelerator", None)
        if accelerator is not None and getattr(accelerator, "scaler", None) is not None:
            return True  # fp16 loss scaling: overflowing steps are the scaler's to skip
        grads = [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
        if not grads:
            return True  # DeepSpeed keeps (partitioned) gradients off the parameters
        bad = torch.stack([~torch.isfinite(g).all() for g in grads]).any().float()  # one value, no sync yet
        if accelerator is not None:
            bad = accelerator.reduce(bad, reduction="sum")  # FSDP: each process holds a shard
        return bad.item() == 0


class ExtraStateCallback(TrainerCallback):
    """Save trainer extra state + stage callback state beside every checkpoint; restore on resume."""

    def __init__(self, trainer: ScheduledTrainer, stage_callback: StageCallback | None = None):
        self.trainer = trainer
        self.stage_callback = stage_callback

    def state(self) -> dict:
        data = {"trainer": self.trainer.extra_state()}
        if self.stage_callback is not None:
            data["stage"] = self.stage_callback.state_dict()
        rows = getattr(self.trainer, "teacher_forward_rows", None)
        if rows is not None:  # so the schedule log of a resumed run counts the whole run, as uninterrupted
            data["teacher_forward_rows"] = int(rows)
        return data

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write_json(folder / STATE_FILE, self.state())

    def restore(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            raise ValueError(f"{path}: missing; cannot resume this distillation run exactly")
        data = json.loads(path.read_text())
        self.trainer.load_extra_state(data.get("trainer", {}))
        if "teacher_forward_rows" in data and hasattr(self.trainer, "teacher_forward_rows"):
            self.trainer.teacher_forward_rows = int(data["teacher_forward_rows"])
        if self.stage_callback is not None:
            self.stage_callback.load_state_dict(data.get("stage", {}))
            # The optimizer state comes from the checkpoint; the stage's reset already happened or is
            # still due — `stage` records which, so the next on_step_begin does the right thing.
