"""Which checkpoint is "best": the selection split of a recipe, the argmax rule, and scoring checkpoints.

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
from pathlib import Path

from distillkit_scd.config import Recipe

logger = logging.getLogger(__name__)

SCORES_FILE = "selection_scores.json"
"""Per-checkpoint selection scores of an SFT run (a resumed stage re-scores only what is missing)."""


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
    from distillkit_scd.scoring import scoring_for

    return scoring_for(task, options).selection_score(metrics)


def score_checkpoints(recipe: Recipe, folder: Path, paths: Sequence[str], tokenizer) -> list[dict]:
    """Task metrics by generation of every checkpoint on the selection split, in `paths` order.

    Scores already in `folder/selection_scores.json` (keyed by checkpoint path) are reused, and each new
    one is written as soon as it exists, so a stage killed while scoring resumes where it stopped (the
    pipeline removes the folder whenever the stage's inputs change).

    Raises:
        ValueError: the selection split is empty (clean protocol with `validation_fraction: 0`).
    """
    import json

    from distillkit_scd.atomic import atomic_write_json
    from distillkit_scd.evaluate import generation_budget, score_model
    from distillkit_scd.models import load_model
    from distillkit_scd.scoring import scoring_for
    from distillkit_scd.workspace import Workspace

    split_name = selection_split(recipe)
    split = Workspace(recipe).task_splits()[split_name]
    if not len(split):
        raise ValueError(f"sft.select_by: val_score needs a non-empty {split_name} split to score checkpoints on; "
                         "set task.options.validation_fraction > 0, evaluation.select_by: test (the paper's "
                         "protocol) or sft.select_by: val_loss")
    file = Path(folder) / SCORES_FILE
    try:
        done = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = {}
    m = recipe.models
    max_new = generation_budget(recipe)
    out = []
    for path in paths:
        if str(path) not in done:
            model = load_model(str(path), m.dtype, m.trust_remote_code, m.attn_implementation)
            if _cuda():
                model = model.to("cuda")
            scoring = scoring_for(recipe.task.name, recipe.task.options)
            metrics, _ = score_model(model, tokenizer, split, scoring, recipe, max_new)
            del model
            done[str(path)] = metrics
            atomic_write_json(file, done)
            logger.info("selection (%s split): %s %s", split_name, Path(path).name,
                        {k: round(v, 4) for k, v in metrics.items()})
        out.append(done[str(path)])
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
