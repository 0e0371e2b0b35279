"""Scoring dispatch: a task's registry entry (and, for `chat`, the chosen metric) → its `Scoring`.

Nothing here names a task: the facts (scoring kind, kappa weights, Table 1 columns) live on the entry
in `tasks.TASKS`, the rules in `evaluation.metrics.SCORERS` and `chat_metrics.METRICS`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from distillkit_scd.evaluation.chat_metrics import build_chat_scoring
from distillkit_scd.evaluation.metrics import SCORERS, Scoring


def scoring_for(task: str, options: dict | None = None) -> Scoring:
    """The scoring of a registered task; `options` are the task's options (`chat` reads `metric`).

    Raises:
        ValueError: unknown task, or a bad `metric` option (field named).
    """
    from distillkit_scd.tasks import get_task

    spec = get_task(task)
    if spec.kind == "chosen":
        return build_chat_scoring(task, (options or {}).get("metric"))
    if spec.kind not in SCORERS:
        raise ValueError(f"task {task}: scoring kind {spec.kind!r} is not one of {', '.join(SCORERS)}")
    kwargs = {"kappa_weights": spec.kappa_weights} if spec.kind == "choice" else {}
    return Scoring(task, spec.kind, kwargs, spec.columns, functools.partial(SCORERS[spec.kind], **kwargs))


def score_task(task: str, golds: Sequence, generations: Sequence[str], options: dict | None = None
               ) -> tuple[dict, list[dict]]:
    """Parse generations and score them with the task's metrics (its registry entry decides which).

    Args:
        task: a registered task name (`tasks.TASKS`).
        golds: gold answers as in the data's `answer` field (a letter, yes/no/maybe, a list literal or
            list for NRNER, a short string for synthetic; the gold assistant text for `chat`).
        generations: decoded model outputs, same order.
        options: the task's options (`task.options` of a recipe); `chat` reads its `metric` there.
    Returns:
        (metrics, samples): metrics maps names to numbers (primary ones, extras such as `kappa`,
        `macro_f1`, and `unparsed`, the number of outputs the parse rule found no answer in); samples has
        one record per item: `prediction` (the label or list compared with gold; "None"/"invalid" when
        unparsable), `parsed` (bool) and `scores` (per-sample values whose means are the primary metrics).
    Raises:
        ValueError: unknown task, unequal lengths, no items, or an unreadable gold answer.
    """
    return scoring_for(task, options).score(golds, generations)
