"""Which teacher checkpoint each distillation stage uses: fixed (TD, TAID), progressive (CD), scheduled (SCD).

Schedules are pure functions of the stage (SCD's also of the student, through its selector), so a
resumed run makes the same choices; the choices made are kept in the schedule log saved with
checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def progressive_schedule(num_checkpoints: int, steps_per_checkpoint: int, total_steps: int) -> list[int]:
    """Panigrahi et al.'s (N, T)-progressive schedule: 0-based checkpoint index for each step.

    Checkpoint i is used for steps [i·T, (i+1)·T); steps beyond N·T use the final teacher (N−1).
    """
    _check_positive("num_checkpoints", num_checkpoints)
    _check_positive("steps_per_checkpoint", steps_per_checkpoint)
    if not isinstance(total_steps, int) or total_steps < 0:
        raise ValueError(f"total_steps: expected a non-negative integer, got {total_steps!r}")
    return [min(step // steps_per_checkpoint, num_checkpoints - 1) for step in range(total_steps)]


def select_checkpoint(kl_best_to_ckpt: Sequence[float], kl_student_to_ckpt: Sequence[float]) -> int:
    """SCD's choice j* = argmin_j KL(p_best ‖ p_j) + KL(q ‖ p_j) (paper section 5.2).

    Ties go to the earliest checkpoint (the one closest to the student along the teacher's trajectory).

    Raises:
        ValueError: empty or different-length inputs, or a NaN term.
    """
    a, b = list(map(float, kl_best_to_ckpt)), list(map(float, kl_student_to_ckpt))
    if not a or len(a) != len(b):
        raise ValueError(f"select_checkpoint: expected two equal-length non-empty lists, got {len(a)} and {len(b)}")
    totals = [x + y for x, y in zip(a, b)]
    if any(math.isnan(t) for t in totals):
        raise ValueError(f"select_checkpoint: NaN in the KL terms {totals}")
    return min(range(len(totals)), key=lambda j: (totals[j], j))


def stage_of_step(step: int, steps_per_stage: int) -> int:
    """0-based stage of a 0-based optimizer step."""
    _check_positive("steps_per_stage", steps_per_stage)
    return step // steps_per_stage


class FixedSchedule:
    """TD and TAID: always p(best)."""

    kind = "fixed"

    def __init__(self, best_index: int):
        self.best_index = best_index

    def checkpoint_for_stage(self, stage: int, **context) -> tuple[int, list]:
        return self.best_index, []


class ProgressiveSchedule:
    """CD: p(1), p(2), … p(N) for one stage each, then the final teacher."""

    kind = "progressive"

    def __init__(self, num_checkpoints: int):
        _check_positive("num_checkpoints", num_checkpoints)
        self.num_checkpoints = num_checkpoints

    def checkpoint_for_stage(self, stage: int, **context) -> tuple[int, list]:
        return min(stage, self.num_checkpoints - 1), []


class ScheduledSelection:
    """SCD: at each stage start, the checkpoint balancing quality and proximity to the current student."""

    kind = "scheduled"

    def __init__(self, selector):
        self.selector = selector

    def checkpoint_for_stage(self, stage: int, student=None, **context) -> tuple[int, list]:
        if student is None:
            raise ValueError("ScheduledSelection needs the current student model")
        return self.selector.select(student)
