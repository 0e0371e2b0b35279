"""What our `DistillationTrainer` and the DistillKit integration's trainer share, and what callbacks use.

- `StagedTrainerMixin`: the staged LR scheduler (restarted every T steps when `steps_per_stage` is set),
  the extra resume state (active teacher checkpoint, TAID's state) and the teacher-schedule log fields.
  Both trainers inherit it (`class X(StagedTrainerMixin, SomeTrainer)`), so no method is borrowed.
- `ScheduledTrainer`: a `typing.Protocol` naming exactly what `training/callbacks.py` reads and calls on a trainer.
- `reset_optimizer_state`: a fresh AdamW at every stage start, in place.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch.optim.lr_scheduler import LambdaLR

from distillkit_scd.schedules.lr import staged_lr_lambda


def reset_optimizer_state(optimizer) -> None:
    """Forget AdamW moments and step counts: identical to a freshly built optimizer over the same params."""
    inner = optimizer
    while hasattr(inner, "optimizer"):  # accelerate's AcceleratedOptimizer, DeepSpeed's ZeRO wrappers
        inner = inner.optimizer
    inner.state.clear()


def schedule_log_fields(active_checkpoint: int | None, taid_state) -> dict:
    """The teacher-schedule fields of a training log line: the active checkpoint (when there is a teacher
    schedule) and TAID's t (when TAID runs)."""
    out: dict = {}
    if active_checkpoint is not None:
        out["active_checkpoint"] = active_checkpoint
    if taid_state is not None:
        out["taid_t"] = round(float(taid_state.t), 6)
    return out


class StagedTrainerMixin:
    """Staged LR schedule and resume state for a transformers `Trainer` subclass (list it first).

    The host sets `steps_per_stage` (T, or None for transformers' own schedule over the whole run),
    `active_checkpoint` (the teacher checkpoint in use) and `taid_state` (`TAIDState` or None).
    """

    steps_per_stage: int | None = None
    active_checkpoint: int = 0
    taid_state = None

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
    callbacks read with `getattr`: `last_step_distill`, `accelerator`, `is_deepspeed_enabled`,
    `teacher_forward_rows`."""

    model: torch.nn.Module
    optimizer: Any
    active_checkpoint: int
    taid_state: Any
    last_batch_ids: Any

    @property
    def teacher_model_module(self) -> torch.nn.Module | None: ...

    def pop_step_loss(self) -> float: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...
