"""Teacher checkpoint schedules: hand-worked cases and boundaries."""

from __future__ import annotations

import math

import pytest

from distillkit_scd.schedules.teacher_checkpoints import (
    SCHEDULES,
    FixedSchedule,
    ProgressiveSchedule,
    ScheduledSelection,
    progressive_schedule,
    select_checkpoint,
)


def test_progressive_schedule_hand_worked():
    """N=3, T=2 over 9 steps: 0,0 | 1,1 | 2,2 | then the final teacher (2) for the 3 remaining steps."""
    assert progressive_schedule(3, 2, 9) == [0, 0, 1, 1, 2, 2, 2, 2, 2]


def test_progressive_schedule_boundaries():
    """Step i·T is the first step of checkpoint i; step i·T−1 the last of checkpoint i−1; short runs stop early."""
    sched = progressive_schedule(4, 5, 20)
    for i in range(1, 4):
        assert sched[i * 5 - 1] == i - 1 and sched[i * 5] == i
    assert progressive_schedule(4, 5, 7) == [0] * 5 + [1] * 2
    assert progressive_schedule(1, 3, 4) == [0, 0, 0, 0]
    assert progressive_schedule(2, 1, 0) == []


@pytest.mark.parametrize("args, name", [((0, 1, 1), "num_checkpoints"), ((2, 0, 1), "steps_per_checkpoint"),
                                        ((2, 1, -1), "total_steps"), ((2.0, 1, 1), "num_checkpoints"),
                                        ((True, 1, 1), "num_checkpoints")])
def test_progressive_schedule_rejects_bad_args(args, name):
    """Bad arguments raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=name):
        progressive_schedule(*args)


def test_select_checkpoint_argmin_of_sum():
    """j* minimises the SUM of the two terms, not either term alone."""
    kl_best = [3.0, 1.0, 0.0]  # term 1 alone would pick 2
    kl_student = [0.0, 0.5, 2.0]  # term 2 alone would pick 0
    assert select_checkpoint(kl_best, kl_student) == 1  # sums 3.0, 1.5, 2.0


def test_select_checkpoint_ties_go_to_earliest():
    """Exactly equal sums pick the earliest checkpoint (documented rule)."""
    assert select_checkpoint([1.0, 0.5, 0.0], [0.0, 0.5, 1.0]) == 0
    assert select_checkpoint([2.0, 1.0, 1.0], [0.0, 0.0, 0.0]) == 1


def test_select_checkpoint_inf_loses_nan_refused():
    """+inf terms lose; a NaN term raises ValueError naming the checkpoint."""
    assert select_checkpoint([math.inf, 1.0], [0.0, 1.0]) == 1
    with pytest.raises(ValueError, match="checkpoint 1"):
        select_checkpoint([0.0, math.nan], [0.0, 0.0])
    with pytest.raises(ValueError, match="lengths"):
        select_checkpoint([0.0], [0.0, 1.0])
    with pytest.raises(ValueError):
        select_checkpoint([], [])


def test_schedule_classes_common_interface():
    """fixed → best every stage; progressive → stage index capped at N−1; scheduled → the selector's answer."""
    fixed = FixedSchedule(2, num_checkpoints=4)
    assert [fixed.checkpoint_for_stage(i)[0] for i in range(5)] == [2] * 5
    prog = ProgressiveSchedule(3)
    assert [prog.checkpoint_for_stage(i)[0] for i in range(5)] == [0, 1, 2, 2, 2]
    # Consistency with the per-step schedule at stage starts.
    steps = progressive_schedule(3, 4, 20)
    assert [prog.checkpoint_for_stage(s // 4)[0] for s in range(20)] == steps

    class Selector:
        def select(self, student):
            return 1, [{"checkpoint": 0}, {"checkpoint": 1}]

    sched = ScheduledSelection(Selector())
    assert sched.checkpoint_for_stage(0, student=object())[0] == 1
    with pytest.raises(ValueError, match="student"):
        sched.checkpoint_for_stage(0)
    with pytest.raises(ValueError, match="best_index"):
        FixedSchedule(4, num_checkpoints=4)
    assert set(SCHEDULES) == {"fixed", "progressive", "scheduled"}
