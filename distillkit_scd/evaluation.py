"""Answer parsing and the official metrics (see the data README, section 2.3, and PubMedQA's evaluator).

Model output is data: NER lists are parsed with `ast.literal_eval`, never `eval` (the upstream JMED
evaluator uses `eval`; for list literals the result is the same, for anything else we return []).

- Multiple choice (JMMLU, CRADE, RRTNM, SMDIS): `parse_choice` takes the first ASCII capital A–F in the
  text, else None ("None" as a label, always wrong). Accuracy, and Cohen's kappa with scikit-learn's
  semantics (labels = sorted union of gold and predicted; linear weights for CRADE).
- PubMedQA: `parse_yes_no_maybe` takes the first whole word yes/no/maybe (case-insensitive); anything
  else is the label "invalid", which counts as wrong and — as in upstream's evaluator, whose class set is
  the union of gold and predicted labels — is an extra class with F1 = 0 in the macro average.
- NRNER: `parse_ner` + `ner_f1` per item in three modes, averaged over items (macro, not micro).
- synthetic: exact match of the stripped generation against the gold answer.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

CHOICE_LETTERS = "ABCDEF"
NONE_LABEL = "None"
INVALID = "invalid"


def parse_choice(text: str) -> str | None:
    """JMED rule: the first ASCII capital A–F anywhere in the text, else None."""
    for ch in text:
        if ch in CHOICE_LETTERS:
            return ch
    return None


_YNM = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)


def parse_yes_no_maybe(text: str) -> str:
    """The first whole word yes/no/maybe (case-insensitive), lower-cased; else "invalid"."""
    match = _YNM.search(text)
    return match.group(1).lower() if match else INVALID


def _parse_ner_checked(text: str) -> tuple[list, bool]:
    """(items, parsed): `parsed` is False when the text is not a list literal (then items is [])."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return [], False
    if not isinstance(value, list):
        return [], False
    return [v for v in value if isinstance(v, (str, int, float, bool, tuple))], True


def parse_ner(text: str) -> list:
    """The whole text as a Python list literal (safely, `ast.literal_eval`), else []. Never runs code.

    Items are kept as parsed (a predicted 3 never equals the gold "3", but still counts in |P| and so
    lowers precision, as upstream's `eval` does); unhashable items (nested lists, dicts) are dropped,
    since upstream compares sets.
    """
    return _parse_ner_checked(text)[0]


def ner_f1(gold: Sequence[str], pred: Sequence[str], mode: str) -> float:
    """Per-item F1 between gold and predicted entity lists.

    Modes:
        exact: matched = |G ∩ P|.
        partial: the JMED-LLM upstream definition — set-membership tests, so matched = |G| when P is
            non-empty and G ∩ P is non-empty, else 0; precision = matched/|P| can exceed 1, and so can F1
            (e.g. G={a,b,c}, P={a,x} → 1.2).
        substring: a gold g is recalled if some p ⊆ g or g ⊆ p as substrings; a prediction p is precise if
            some g satisfies the same.
    """
    g, p = set(gold), set(pred)
    if not g:
        raise ValueError("ner_f1: gold list is empty (upstream would divide by zero)")
    if mode == "exact":
        matched = len(g & p)
        recall, precision = matched / len(g), (matched / len(p) if p else 0.0)
    elif mode == "partial":
        matched = sum(1 for gi in g if any(gi in p or pi in g for pi in p))
        recall, precision = matched / len(g), (matched / len(p) if p else 0.0)
    elif mode == "substring":
        strs = [pi for pi in p if isinstance(pi, str)]
        recalled = sum(1 for gi in g if any(pi in gi or gi in pi for pi in strs))
        precise = sum(1 for pi in strs if any(pi in gi or gi in pi for gi in g))
        recall, precision = recalled / len(g), (precise / len(p) if p else 0.0)
    else:
        raise ValueError(f"ner_f1 mode: expected exact, partial or substring, got {mode!r}")
    if recall + precision == 0:
        return 0.0
    return 2 * recall * precision / (recall + precision)


def accuracy(gold: Sequence, pred: Sequence) -> float:
    if len(gold) != len(pred) or not gold:
        raise ValueError(f"accuracy: expected equal-length non-empty lists, got {len(gold)} and {len(pred)}")
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def cohen_kappa(gold: Sequence[str], pred: Sequence[str], weights: str | None = None) -> float:
    """Cohen's kappa with scikit-learn's `cohen_kappa_score` semantics.

    Labels are the sorted union of gold and predicted labels (None → "None"); weights None, "linear" or
    "quadratic" on the label *positions* in that sorted order. Returns 1.0 − observed/expected
    disagreement; if expected disagreement is 0 the result is NaN as in scikit-learn.
    """
    g = [NONE_LABEL if x is None else str(x) for x in gold]
    p = [NONE_LABEL if x is None else str(x) for x in pred]
    if len(g) != len(p) or not g:
        raise ValueError(f"cohen_kappa: expected equal-length non-empty lists, got {len(g)} and {len(p)}")
    labels = sorted(set(g) | set(p))  # as scikit-learn: "None" sorts after "F" ('N' > 'F')
    k = len(labels)
    pos = {label: i for i, label in enumerate(labels)}
    confusion = [[0.0] * k for _ in range(k)]
    for a, b in zip(g, p):
        confusion[pos[a]][pos[b]] += 1
    n = len(g)
    row = [sum(confusion[i]) for i in range(k)]
    col = [sum(confusion[i][j] for i in range(k)) for j in range(k)]

    def weight(i, j):
        if weights is None:
            return 0.0 if i == j else 1.0
        if weights == "linear":
            return abs(i - j)
        if weights == "quadratic":
            return (i - j) ** 2
        raise ValueError(f"cohen_kappa weights: expected None, 'linear' or 'quadratic', got {weights!r}")

    observed = sum(weight(i, j) * confusion[i][j] for i in range(k) for j in range(k))
    expected = sum(weight(i, j) * row[i] * col[j] / n for i in range(k) for j in range(k))
    if expected == 0:
        return float("nan")
    return 1.0 - observed / expected


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the union of gold and predicted labels (sklearn 'macro')."""
    labels = sorted(set(gold) | set(pred))
    scores = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


NER_MODES = ("exact", "partial", "substring")


def ner_scores(golds: Sequence[Sequence[str]], preds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Task-level NER scores: for each mode, the unweighted mean of the per-item F1 (macro, as upstream).

    Returns ``{"exact_f1", "partial_f1", "substring_f1"}``. Raises ValueError on unequal or empty lists.
    """
    if len(golds) != len(preds) or not golds:
        raise ValueError(f"ner_scores: expected equal-length non-empty lists, got {len(golds)} and {len(preds)}")
    return {f"{m}_f1": sum(ner_f1(g, p, m) for g, p in zip(golds, preds)) / len(golds) for m in NER_MODES}


CHOICE_TASKS = ("jmmlu", "crade", "rrtnm", "smdis")
KAPPA_WEIGHTS = {"jmmlu": None, "crade": "linear", "rrtnm": None, "smdis": None}
"""JMED-LLM's kappa per task: linear weights for the ordinal CRADE labels, unweighted otherwise."""

PRIMARY_METRICS = {
    "synthetic": ("accuracy",),
    "pubmedqa": ("accuracy",),
    "jmmlu": ("accuracy",),
    "crade": ("accuracy",),
    "rrtnm": ("accuracy",),
    "smdis": ("accuracy",),
    "nrner": ("exact_f1", "partial_f1"),
}
"""What Table 1 reports per task (the paper reports accuracy for every classification task; kappa and
macro-F1 are recorded as extras). Every primary metric is the mean of a per-sample score of the same
name, so a table cell can be recomputed from the samples of a results file."""

PRIMARY_METRIC = {task: keys[0] if len(keys) == 1 else keys for task, keys in PRIMARY_METRICS.items()}
"""The same as a name per task (a tuple for NRNER, which has two Table 1 columns)."""


def _gold_list(gold, where: str) -> list:
    """An NRNER gold answer: a list, or the list literal of the data's `answer` cell."""
    value = gold
    if isinstance(gold, str):
        try:
            value = ast.literal_eval(gold.strip())
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"score_task nrner: {where}: gold {gold[:60]!r} is not a list literal ({err})") from None
    if not isinstance(value, list) or not value:
        raise ValueError(f"score_task nrner: {where}: gold {gold!r}: expected a non-empty list of strings")
    return value


def score_task(task: str, golds: Sequence, generations: Sequence[str]) -> tuple[dict, list[dict]]:
    """Parse generations and score them with the task's official metrics.

    Args:
        task: one of `PRIMARY_METRICS` (synthetic, pubmedqa, jmmlu, crade, rrtnm, smdis, nrner).
        golds: gold answers as in the data's `answer` field (a letter, yes/no/maybe, a list literal or
            list for NRNER, a short string for synthetic).
        generations: decoded model outputs, same order.
    Returns:
        (metrics, samples): metrics maps names to numbers (primary ones, extras such as `kappa`,
        `macro_f1`, and `unparsed`, the number of outputs the parse rule found no answer in); samples has
        one record per item: `prediction` (the label or list compared with gold; "None"/"invalid" when
        unparsable), `parsed` (bool) and `scores` (per-sample values whose means are the primary metrics).
    Raises:
        ValueError: unknown task, unequal lengths, no items, or an unreadable NRNER gold.
    """
    if task not in PRIMARY_METRICS:
        raise ValueError(f"score_task: unknown task {task!r}; expected one of {', '.join(PRIMARY_METRICS)}")
    if len(golds) != len(generations) or not golds:
        raise ValueError(f"score_task {task}: {len(golds)} gold answers but {len(generations)} generations "
                         "(expected equal, non-zero counts)")
    if task == "nrner":
        gold_lists = [_gold_list(g, f"item {i}") for i, g in enumerate(golds)]
        checked = [_parse_ner_checked(t) for t in generations]
        preds = [items for items, _ in checked]
        samples = [{"prediction": p, "parsed": ok,
                    "scores": {f"{m}_f1": ner_f1(g, p, m) for m in NER_MODES}}
                   for g, (p, ok) in zip(gold_lists, checked)]
        metrics = ner_scores(gold_lists, preds)
        metrics["unparsed"] = sum(not ok for _, ok in checked)
        return metrics, samples
    golds = [str(g) for g in golds]
    if task == "pubmedqa":
        preds = [parse_yes_no_maybe(t) for t in generations]
        parsed = [p != INVALID for p in preds]
        metrics = {"accuracy": accuracy(golds, preds), "macro_f1": macro_f1(golds, preds),
                   "invalid": sum(not ok for ok in parsed)}
    elif task == "synthetic":
        preds = [t.strip() for t in generations]
        parsed = [True] * len(preds)
        metrics = {"accuracy": accuracy(golds, preds)}
    else:  # multiple choice: the JMED letter rule, "None" when no letter (always wrong, its own kappa label)
        letters = [parse_choice(t) for t in generations]
        parsed = [x is not None for x in letters]
        preds = [NONE_LABEL if x is None else x for x in letters]
        metrics = {"accuracy": accuracy(golds, preds), "kappa": cohen_kappa(golds, preds, KAPPA_WEIGHTS[task])}
    metrics["unparsed"] = sum(not ok for ok in parsed)
    samples = [{"prediction": p, "parsed": ok, "scores": {"accuracy": float(p == g)}}
               for p, ok, g in zip(preds, parsed, golds)]
    return metrics, samples
