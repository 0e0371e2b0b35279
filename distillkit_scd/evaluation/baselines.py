"""Trivial reference points for Table 1: the majority-answer baseline.

A "model" that ignores the input and always outputs the most frequent gold answer of the train split
(a letter, yes/no/maybe, or — for NRNER — the most frequent gold list literal). Its scores show how much
of a number is label skew: e.g. SMDIS on the full pool is 87.5% "B", so accuracy alone is weak evidence
there. Scored with the same parser and metrics as real generations (`scoring.score_task`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from distillkit_scd.evaluation.scoring import score_task

REAL_TASKS = ("jmmlu", "pubmedqa", "nrner", "crade", "rrtnm", "smdis")


def majority_answer(train_answers: Sequence) -> str:
    """The most frequent answer; ties go to the smallest answer in sorted order (deterministic).

    Raises: ValueError on an empty train split.
    """
    if not train_answers:
        raise ValueError("majority_answer: the train split has no answers")
    counts = Counter(str(a) for a in train_answers)
    top = max(counts.values())
    return min(a for a, c in counts.items() if c == top)


def majority_baseline(task: str, train_answers: Sequence, test_answers: Sequence) -> tuple[dict, list[dict], str]:
    """Score the constant prediction `majority_answer(train)` on the test answers.

    Returns: (metrics, per-sample records, the predicted answer), metrics as `score_task` gives them.
    """
    answer = majority_answer(train_answers)
    metrics, samples = score_task(task, list(test_answers), [answer] * len(test_answers))
    return metrics, samples, answer


def table_row(metrics_by_task: dict[str, dict]) -> dict[str, float]:
    """Table 1 columns (the tasks' registry `columns`) and the paper-style Avg from per-task metrics."""
    from distillkit_scd.reporting.paper_reference import PAPER_COLUMNS
    from distillkit_scd.tasks import TASKS

    row = {column: metrics_by_task[task][key]
           for task, spec in TASKS.items() if task in metrics_by_task for column, key in spec.columns}
    paper = [row[c] for c in PAPER_COLUMNS if c in row]
    row["Avg"] = sum(paper) / len(paper) if paper else sum(row.values()) / len(row)
    return row


def run_majority_baselines(tasks: Sequence[str] = REAL_TASKS, source: str | None = None,
                           options: dict | None = None) -> dict[str, dict]:
    """Load each task's official split (`tasks.load_task`) and score the majority baseline on test.

    Args:
        options: per-task loader options, e.g. {"jmmlu": {"pool": "benchmark"}}.
    Returns: task → {"answer", "metrics", "train_size", "test_size", "split"}.
    """
    from distillkit_scd.tasks import load_task

    out = {}
    for task in tasks:
        splits = load_task(task, source, **(options or {}).get(task, {}))
        metrics, _, answer = majority_baseline(task, splits["train"]["answer"], splits["test"]["answer"])
        info = getattr(splits, "split_info", {})
        out[task] = {"answer": answer, "metrics": metrics, "train_size": len(splits["train"]),
                     "test_size": len(splits["test"]), "split": info.get("definition", "")}
    return out
