"""Small stateful trainer callbacks; what they must remember is saved with every trainer checkpoint.

- `SaveAtStepsCallback`: save (and evaluate) at chosen optimizer steps — the N evenly spaced teacher
  checkpoints, the stage ends of a distillation run.
- `StageCallback`: at each stage start, clear the optimizer state (fresh AdamW) and ask the teacher
  schedule which checkpoint to use, swapping it in place; keeps the schedule log (the paper's Fig. 3).
- `StepLossCallback`: once per optimizer step, stops on a non-finite loss and advances TAID's t with the
  step's loss (the same on every process).
- `ExtraStateCallback`: writes `distill_state.json` into each trainer checkpoint, so a resumed run
  restores the stage, the active checkpoint, the optimizer-reset phase, TAID's state and the log.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import TrainerCallback

from distillkit_scd.trainer import reset_optimizer_state

logger = logging.getLogger(__name__)

STATE_FILE = "distill_state.json"


def atomic_write_json(path: Path, data) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


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

    def __init__(self, trainer, steps_per_stage: int, schedule=None, pool=None, reset_optimizer: bool = True):
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
            logger.info("stage %d (step %d): teacher checkpoint %d %s", stage, step, chosen,
                        "" if not terms else "; terms " + ", ".join(
                            f"j={t['checkpoint']}: {t['kl_best']:.4f}+{t['kl_student']:.4f}" for t in terms))
        if self.pool is not None:
            self.pool.load_into(self.trainer.teacher_model_module, chosen)
        self.trainer.active_checkpoint = int(chosen)

    def state_dict(self) -> dict:
        return {"stage": self.stage, "log": self.log}

    def load_state_dict(self, state: dict) -> None:
        self.stage = state.get("stage", -1)
        self.log = state.get("log", [])


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message names the step, the batch and the last good checkpoint."""


class StepLossCallback(TrainerCallback):
    """Once per optimizer step (never per micro-batch, never on eval batches): read the step's loss
    (mean over processes, one host sync), stop on a non-finite loss, and advance TAID's t.

    A NaN/inf loss stops the run naming the step, the sample ids of its last micro-batch and the newest
    checkpoint on disk (re-running resumes from it). The weights in memory are not saved: the optimizer
    already stepped on the bad gradients.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        import math

        loss = self.trainer.pop_step_loss()
        if not math.isfinite(loss):
            from distillkit_scd.sft import last_checkpoint

            ids = self.trainer.last_batch_ids
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
            raise NonFiniteLossError(
                f"non-finite loss {loss} at optimizer step {state.global_step}; last micro-batch rows "
                f"(sample_index) {ids}; last good checkpoint: {last_checkpoint(Path(args.output_dir)) or 'none'}. "
                "Lower the learning rate or check the data, then re-run the same command to resume."
            )
        if self.trainer.taid_state is not None:
            self.trainer.taid_state.update(loss, state.global_step, state.max_steps)


class ExtraStateCallback(TrainerCallback):
    """Save trainer extra state + stage callback state beside every checkpoint; restore on resume."""

    def __init__(self, trainer, stage_callback: StageCallback | None = None):
        self.trainer = trainer
        self.stage_callback = stage_callback

    def state(self) -> dict:
        data = {"trainer": self.trainer.extra_state()}
        if self.stage_callback is not None:
            data["stage"] = self.stage_callback.state_dict()
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
        if self.stage_callback is not None:
            self.stage_callback.load_state_dict(data.get("stage", {}))
            # The optimizer state comes from the checkpoint; the stage's reset already happened or is
            # still due — `stage` records which, so the next on_step_begin does the right thing.
