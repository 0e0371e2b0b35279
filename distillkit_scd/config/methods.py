"""The distillation methods and the rows of Table 1: one table each, read by every part that needs them.

A method is one row of `METHODS`: the distill stage builds its teacher schedule and loss from it, the
pipeline its stage list (and whether the AW table is needed), the fingerprints the settings it reads, the
report its label, and the DistillKit integration its schedule names. Adding a method is adding a row
(plus its reference numbers in `reporting/paper_reference.py`, if the paper has them).

All methods share the CD infrastructure (paper): N stages of T optimizer steps, optimizer and LR schedule
restarted every stage, the student starting from its SFT p(best).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Schedule = Literal["fixed", "cd", "scd"]
SCHEDULES: tuple[str, ...] = ("fixed", "cd", "scd")
"""Teacher schedules (which checkpoint each stage uses): `fixed` = p(best) throughout; `cd` = CD's
progression p(1), …, p(N), one per stage; `scd` = SCD's choice j* = argmin KL(p_best‖p_j) + KL(q‖p_j)
on the fixed probe set."""


@dataclass(frozen=True)
class MethodSpec:
    """What a distillation method is.

    label (`str`): its row label in Table 1.
    schedule (`str`): the teacher schedule, one of `SCHEDULES`.
    aw (`bool`, defaults to `False`): weight each sample's distillation term by its AW for the active
        checkpoint instead of α (needs the `aw-table` stage).
    taid (`bool`, defaults to `False`): TAID's interpolated target with adaptive t (divergence `taid`,
        settings `distill.taid`); otherwise the recipe's `distill.divergence`.
    """

    label: str
    schedule: Schedule
    aw: bool = False
    taid: bool = False

    def divergence(self, recipe_divergence: str) -> str:
        """The divergence the loss uses: `taid` for TAID, else the recipe's."""
        return "taid" if self.taid else recipe_divergence

    @property
    def settings(self) -> tuple[str, ...]:
        """The `distill` sub-sections this method reads besides the shared fields."""
        return (("taid",) if self.taid else ()) + (("scd",) if self.schedule == "scd" else ())


METHODS: dict[str, MethodSpec] = {
    "td": MethodSpec("TD", schedule="fixed"),
    "taid": MethodSpec("TAID", schedule="fixed", taid=True),
    "cd": MethodSpec("CD", schedule="cd"),
    "scd": MethodSpec("SCD", schedule="scd"),
    "scd_aw": MethodSpec("SCD w/ AW", schedule="scd", aw=True),
}
"""Distillation methods in the paper's order; iterating it gives the method names."""

ZERO_SHOT_ROWS = ("teacher_zero_shot", "student_zero_shot")
SFT_ROWS = ("teacher_sft", "student_sft")
ROWS: dict[str, str] = {
    "teacher_zero_shot": "Teacher zero-shot",
    "teacher_sft": "Teacher SFT",
    "student_zero_shot": "Student zero-shot",
    "student_sft": "Student SFT",
    **{name: spec.label for name, spec in METHODS.items()},
}
"""Table 1 rows (results folder name → row label), in the paper's order: teacher, student, one per method."""


def method_spec(name: str) -> MethodSpec:
    """The row of `name`; raises ValueError naming the methods there are."""
    if name not in METHODS:
        raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]
