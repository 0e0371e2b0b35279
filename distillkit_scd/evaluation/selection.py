"""Which checkpoint is "best": the selection split of a recipe and the argmax rule (scoring by generation:
`evaluation.stage.score_checkpoints`).

The paper: "Let p(best) be the teacher checkpoint with the best performance" (§5.2) and "the student
model checkpoint with the best performance is selected" (§7). Performance is the task score by
generation (the Table 1 metric), measured on the *selection split*: `test` under the paper's protocol
(`evaluation.select_by: test`, no validation carve-out), `validation` under our clean one. One rule
picks every "best" — p(best) in the SFT manifest, the Teacher SFT row, the reported checkpoint of every
trained row: the highest score (or lowest loss), ties to the earlier checkpoint (ours; the paper is
silent), so the Teacher SFT row, TD/TAID's teacher and SCD's first term use the same checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from distillkit_scd.config import Recipe

logger = logging.getLogger(__name__)

def selection_split(recipe: Recipe) -> str:
    """The split that selects checkpoints: `test` (paper protocol) or `validation` (clean protocol)."""
    return "test" if recipe.evaluation.select_by == "test" else "validation"


def protocol_name(select_by: str) -> str:
    """`paper` when checkpoints are selected on test (as the paper does), else `clean`."""
    return "paper" if select_by == "test" else "clean"


def best_index(values: Sequence[float], higher_is_better: bool = True) -> int:
    """Index of the best value; ties go to the earliest index.

    Raises:
        ValueError: empty input or a value that is not a finite number (a missing score cannot select).
    """
    import math

    if not values:
        raise ValueError("best_index: no values to select from")
    for i, v in enumerate(values):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"best_index: value {i} is {v!r}, expected a finite number")
    sign = 1.0 if higher_is_better else -1.0
    return max(range(len(values)), key=lambda i: (sign * values[i], -i))


def primary_score(task: str, metrics: dict, options: dict | None = None) -> float:
    """The selection score: the mean of the task's Table 1 metrics (NRNER: exact and partial F1), negated
    for a loss (chat metric `none`), so larger is always better. `options`: the task's options."""
    from distillkit_scd.evaluation.scoring import scoring_for

    return scoring_for(task, options).selection_score(metrics)
