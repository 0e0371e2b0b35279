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

Which rule a task uses, its kappa weights and its Table 1 columns are facts of the task's registry entry
(`tasks.TASKS`); `scoring.scoring_for` turns an entry (and, for `chat`, the chosen metric) into a scorer.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


def _gold_list(gold, where: str) -> list:
    """An NRNER gold answer: a list, or the list literal of the data's `answer` cell."""
    value = gold
    if isinstance(gold, str):
        try:
            value = ast.literal_eval(gold.strip())
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"score nrner: {where}: gold {gold[:60]!r} is not a list literal ({err})") from None
    if not isinstance(value, list) or not value:
        raise ValueError(f"score nrner: {where}: gold {gold!r}: expected a non-empty list of strings")
    return value


def _per_sample_accuracy(preds: list, parsed: list[bool], golds: list[str], metrics: dict) -> tuple[dict, list]:
    metrics["unparsed"] = sum(not ok for ok in parsed)
    samples = [{"prediction": p, "parsed": ok, "scores": {"accuracy": float(p == g)}}
               for p, ok, g in zip(preds, parsed, golds)]
    return metrics, samples


def score_ner(golds: Sequence, generations: Sequence[str]) -> tuple[dict, list[dict]]:
    """NRNER: `parse_ner` and per-item exact / partial / substring F1 (see `ner_f1`)."""
    gold_lists = [_gold_list(g, f"item {i}") for i, g in enumerate(golds)]
    checked = [_parse_ner_checked(t) for t in generations]
    samples = [{"prediction": p, "parsed": ok, "scores": {f"{m}_f1": ner_f1(g, p, m) for m in NER_MODES}}
               for g, (p, ok) in zip(gold_lists, checked)]
    metrics = ner_scores(gold_lists, [items for items, _ in checked])
    metrics["unparsed"] = sum(not ok for _, ok in checked)
    return metrics, samples


def score_yes_no_maybe(golds: Sequence, generations: Sequence[str]) -> tuple[dict, list[dict]]:
    """PubMedQA: `parse_yes_no_maybe`; accuracy, macro-F1 (invalid as its own class) and the invalid count."""
    golds = [str(g) for g in golds]
    preds = [parse_yes_no_maybe(t) for t in generations]
    metrics = {"accuracy": accuracy(golds, preds), "macro_f1": macro_f1(golds, preds),
               "invalid": sum(p == INVALID for p in preds)}
    return _per_sample_accuracy(preds, [p != INVALID for p in preds], golds, metrics)


def score_exact(golds: Sequence, generations: Sequence[str]) -> tuple[dict, list[dict]]:
    """synthetic: exact match of the stripped generation."""
    golds = [str(g) for g in golds]
    preds = [t.strip() for t in generations]
    return _per_sample_accuracy(preds, [True] * len(preds), golds, {"accuracy": accuracy(golds, preds)})


def score_choice(golds: Sequence, generations: Sequence[str], kappa_weights: str | None = None
                 ) -> tuple[dict, list[dict]]:
    """Multiple choice: the JMED letter rule, "None" when no letter (always wrong, its own kappa label)."""
    golds = [str(g) for g in golds]
    letters = [parse_choice(t) for t in generations]
    preds = [NONE_LABEL if x is None else x for x in letters]
    metrics = {"accuracy": accuracy(golds, preds), "kappa": cohen_kappa(golds, preds, kappa_weights)}
    return _per_sample_accuracy(preds, [x is not None for x in letters], golds, metrics)


SCORERS = {"choice": score_choice, "yesno": score_yes_no_maybe, "ner": score_ner, "exact": score_exact}
"""Built-in scoring kinds (a task registry entry's `kind`): `fn(golds, generations, **options)` →
(metrics, samples). Metrics hold the primary ones, extras (`kappa`, `macro_f1`) and `unparsed`; each
sample has `prediction`, `parsed` and `scores` (per-sample values whose means are the primary metrics)."""


@dataclass(frozen=True)
class Scoring:
    """How one task's outputs are scored: built by `scoring.scoring_for` from the task's registry entry.

    task, metric, options: what is recorded in every results file (`describe()`).
    columns: Table 1 columns, `(column name, per-sample score key)`; the keys are the primary metrics.
    scorer: `fn(golds, generations) -> (metrics, samples)`; None when `needs_generation` is False.
    lower_is_better: the primary metrics are losses (metric `none`): selection takes the minimum.
    needs_generation: False for loss-only scoring, whose per-sample scores come from the model's loss.
    """

    task: str
    metric: str
    options: dict
    columns: tuple[tuple[str, str], ...]
    scorer: Callable[[Sequence, Sequence[str]], tuple[dict, list[dict]]] | None = field(default=None, repr=False)
    lower_is_better: bool = False
    needs_generation: bool = True

    @property
    def primary(self) -> tuple[str, ...]:
        return tuple(key for _, key in self.columns)

    def selection_score(self, metrics: dict) -> float:
        """Mean of the primary metrics, negated for losses, so that larger is always better."""
        value = sum(metrics[k] for k in self.primary) / len(self.primary)
        return -value if self.lower_is_better else value

    def score(self, golds: Sequence, generations: Sequence[str]) -> tuple[dict, list[dict]]:
        if self.scorer is None:
            raise ValueError(f"task {self.task}: metric {self.metric!r} scores losses, not generations")
        if len(golds) != len(generations) or not golds:
            raise ValueError(f"score_task {self.task}: {len(golds)} gold answers but {len(generations)} generations "
                             "(expected equal, non-zero counts)")
        return self.scorer(golds, generations)

    def describe(self) -> dict:
        """The JSON record of this scoring (metric, its options, the Table 1 columns, the direction)."""
        return {"metric": self.metric, "options": dict(self.options),
                "columns": [list(c) for c in self.columns], "lower_is_better": self.lower_is_better}
