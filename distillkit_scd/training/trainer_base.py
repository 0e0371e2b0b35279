"""What our `DistillationTrainer` and the DistillKit integration's trainer share, and what callbacks use.

- `StagedTrainerMixin`: the staged LR scheduler (restarted every T steps when `steps_per_stage` is set),
  the extra resume state (active teacher checkpoint, TAID's state), the step-loss sums (`step_losses`) and
  the fields of a training log line. Both trainers inherit it (`class X(StagedTrainerMixin, SomeTrainer)`),
  so no method is borrowed and both log the teacher-schedule fields and their loss parts one way.
- `ScheduledTrainer`: a `typing.Protocol` naming exactly what `training/callbacks.py` reads and calls on a trainer.
- `reset_optimizer_state`: a fresh AdamW at every stage start, in place.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch.optim.lr_scheduler import LambdaLR

from distillkit_scd.schedules.lr import staged_lr_lambda
from distillkit_scd.training.step_losses import StepLossSums


def reset_optimizer_state(optimizer) -> None:
    """Forget AdamW moments and step counts: identical to a freshly built optimizer over the same params."""
    inner = optimizer
    while hasattr(inner, "optimizer"):  # accelerate's AcceleratedOptimizer, DeepSpeed's ZeRO wrappers
        inner = inner.optimizer
    inner.state.clear()


class StagedTrainerMixin:
    """Staged LR schedule, resume state, step-loss sums and log fields for a transformers `Trainer` subclass
    (list it first).

    The host sets `steps_per_stage` (T, or None for transformers' own schedule over the whole run),
    `active_checkpoint` (the teacher checkpoint in use), `taid_state` (`TAIDState` or None) and
    `has_checkpoint_schedule` (whether `active_checkpoint` indexes a teacher checkpoint pool, so is logged),
    and adds each training micro-batch's loss parts to `step_sums` (`StepLossSums.add`).
    """

    steps_per_stage: int | None = None
    active_checkpoint: int = 0
    taid_state = None
    has_checkpoint_schedule: bool = False

    def __init__(self, *args, **kwargs):
        self.step_sums = StepLossSums()
        self.last_step_distill: float | None = None  # the finished step's distillation term (`pop_step_loss`)
        self.last_batch_ids = []  # sample_index of the last micro-batch where rows have one, for error messages
        super().__init__(*args, **kwargs)

    # -- step loss and log fields -------------------------------------------------------------------

    def pop_step_loss(self) -> float:
        """The finished optimizer step's loss, averaged over processes (one host sync per step).

        Also sets `last_step_distill`, the step's distillation term over every process (None when the
        trainer added none): what TAID's update reads (the official code adapts t from the distillation
        loss, not the CE mix).
        """
        loss, self.last_step_distill = self.step_sums.pop_step(self.accelerator)
        return loss

    def train_log_fields(self) -> dict:
        """What a training log line adds to transformers' `loss`, `grad_norm` and `learning_rate`: the loss
        parts since the last line (rounded to 6 decimals), the active checkpoint (with a checkpoint
        schedule) and TAID's t (when TAID runs)."""
        out = {key: round(value, 6) for key, value in self.step_sums.pop_fields(self.accelerator).items()}
        if self.has_checkpoint_schedule:
            out["active_checkpoint"] = self.active_checkpoint
        if self.taid_state is not None:
            out["taid_t"] = round(float(self.taid_state.t), 6)
        return out

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training log line (evaluation lines carry `eval_loss`)
            logs.update(self.train_log_fields())
        super().log(logs, *args, **kwargs)

    # -- staged optimisation and resume -------------------------------------------------------------

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """`steps_per_stage` set: transformers' schedule over T steps, restarted every T steps
        (`distill.lr_schedule: per_stage`); unset: transformers' own schedule over the whole run."""
        if self.steps_per_stage is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            name = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
            warmup = self.args.get_warmup_steps(self.steps_per_stage)  # ratio × T, as transformers rounds it
            fn = staged_lr_lambda(name, self.steps_per_stage, warmup, self.args.lr_scheduler_kwargs)
            self.lr_scheduler = LambdaLR(self.optimizer if optimizer is None else optimizer, fn)
        return self.lr_scheduler

    def extra_state(self) -> dict[str, Any]:
        """What must survive a resume besides model/optimizer/scheduler (saved by `ExtraStateCallback`)."""
        state: dict[str, Any] = {"active_checkpoint": self.active_checkpoint}
        if self.taid_state is not None:
            state["taid"] = self.taid_state.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.active_checkpoint = int(state.get("active_checkpoint", 0))
        if self.taid_state is not None and "taid" in state:
            self.taid_state.load_state_dict(state["taid"])


class ScheduledTrainer(Protocol):
    """What the callbacks (`training/callbacks.py`) use on a trainer; both trainers provide it. Optional extras the
    callbacks read with `getattr`: `accelerator`, `is_deepspeed_enabled`, `teacher_forward_rows`."""

    model: torch.nn.Module
    optimizer: Any
    active_checkpoint: int
    taid_state: Any
    last_batch_ids: Any
    last_step_distill: float | None

    @property
    def teacher_model_module(self) -> torch.nn.Module | None: ...

    def pop_step_loss(self) -> float: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...
