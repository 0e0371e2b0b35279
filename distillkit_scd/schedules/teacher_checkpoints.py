"""Which teacher checkpoint each distillation stage uses: fixed (TD, TAID), progressive (CD), scheduled (SCD).

Checkpoints are 0-based indices into the teacher's manifest (0 = earliest, N−1 = final). A run has N
stages of T optimizer steps; stage i covers steps [i·T, (i+1)·T). Schedules are pure functions of the
stage (SCD's also of the student, through its selector), so a resumed run makes the same choices; the
choices made are kept in the schedule log saved with checkpoints.

Every schedule class has `kind` and `checkpoint_for_stage(stage, **context) -> (index, terms)`, which the
trainer's stage callback calls once at each stage start; `terms` is a list of per-checkpoint dicts for
the schedule log (empty for fixed and progressive schedules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def progressive_schedule(num_checkpoints: int, steps_per_checkpoint: int, total_steps: int) -> list[int]:
    """Panigrahi et al.'s (N, T)-progressive schedule: the 0-based checkpoint index of every step.

    Checkpoint i is used for steps [i·T, (i+1)·T); steps from N·T on use the final teacher N−1.

    Args:
        num_checkpoints: N >= 1.  steps_per_checkpoint: T >= 1.  total_steps: >= 0 (length of the list).

    Raises:
        ValueError: naming the argument and the bad value.
    """
    _check_int("num_checkpoints", num_checkpoints, 1)
    _check_int("steps_per_checkpoint", steps_per_checkpoint, 1)
    _check_int("total_steps", total_steps, 0)
    return [min(step // steps_per_checkpoint, num_checkpoints - 1) for step in range(total_steps)]


def select_checkpoint(kl_best_to_ckpt: Sequence[float], kl_student_to_ckpt: Sequence[float]) -> int:
    """SCD's choice j* = argmin_j KL(p_best ‖ p_j) + KL(q ‖ p_j) (paper section 5.2), 0-based.

    Ties (equal sums, exactly) go to the EARLIEST checkpoint: along the teacher's trajectory it is the
    one nearer the student's starting point, i.e. the smaller capacity gap; it also makes the choice
    deterministic. +inf terms are allowed (that checkpoint just loses); NaN is an error, since a NaN
    would silently never win (or always win) depending on the comparison order.

    Raises:
        ValueError: empty or different-length inputs, or a NaN term (its index named).
    """
    a = [float(x) for x in kl_best_to_ckpt]
    b = [float(x) for x in kl_student_to_ckpt]
    if not a or len(a) != len(b):
        raise ValueError(f"select_checkpoint: expected two equal-length non-empty sequences, got lengths "
                         f"{len(a)} and {len(b)}")
    for j, (x, y) in enumerate(zip(a, b)):
        if math.isnan(x) or math.isnan(y):
            raise ValueError(f"select_checkpoint: NaN KL term for checkpoint {j} (kl_best={x}, kl_student={y})")
    totals = [x + y for x, y in zip(a, b)]
    return min(range(len(totals)), key=lambda j: (totals[j], j))


class FixedSchedule:
    """TD and TAID: always the same checkpoint, p(best)."""

    kind = "fixed"

    def __init__(self, best_index: int, num_checkpoints: int | None = None):
        _check_int("best_index", best_index, 0)
        if num_checkpoints is not None and best_index >= num_checkpoints:
            raise ValueError(f"best_index: {best_index} is outside the {num_checkpoints} checkpoints "
                             f"(0..{num_checkpoints - 1})")
        self.best_index = best_index

    def checkpoint_for_stage(self, stage: int, **context) -> tuple[int, list[dict]]:
        _check_int("stage", stage, 0)
        return self.best_index, []


class ProgressiveSchedule:
    """CD: checkpoint i during stage i (p(1), …, p(N) in the paper's 1-based names), then the final one."""

    kind = "progressive"

    def __init__(self, num_checkpoints: int):
        _check_int("num_checkpoints", num_checkpoints, 1)
        self.num_checkpoints = num_checkpoints

    def checkpoint_for_stage(self, stage: int, **context) -> tuple[int, list[dict]]:
        _check_int("stage", stage, 0)
        return min(stage, self.num_checkpoints - 1), []


class ScheduledSelection:
    """SCD: at each stage start, the checkpoint balancing quality and closeness to the current student.

    `selector` is an `scd_selector.SCDSelector` (anything with `select(student) -> (index, terms)`); the trainer
    passes the live student as `student=`.
    """

    kind = "scheduled"

    def __init__(self, selector):
        self.selector = selector

    def checkpoint_for_stage(self, stage: int, student=None, **context) -> tuple[int, list[dict]]:
        _check_int("stage", stage, 0)
        if student is None:
            raise ValueError("ScheduledSelection.checkpoint_for_stage: pass the current student model as "
                             "student=...")
        return self.selector.select(student)


SCHEDULES = {cls.kind: cls for cls in (FixedSchedule, ProgressiveSchedule, ScheduledSelection)}
"""Schedule classes by kind (fixed name → class table)."""
