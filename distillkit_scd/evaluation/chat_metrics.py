"""Metrics a user chooses for the `chat` task (`task.options.metric`), each a per-sample rule.

`metric` is a name, or a mapping with `name` and the metric's options:

| name          | options                                   | per-sample score (Table 1 column)            |
|---------------|-------------------------------------------|----------------------------------------------|
| `exact_match` | —                                         | `exact_match`: normalised generation == gold |
| `choice`      | `labels` (list, default A–F), `kappa_weights` | `accuracy` of the parsed label; kappa, macro-F1 extras |
| `regex`       | `pattern` (required), `ignore_case`, `apply_to_gold` | `exact_match` of the extracted text   |
| `f1_list`     | `separator` (default ",")                 | `f1`: set F1 of the two lists                |
| `none`        | —                                         | `loss`: the model's mean token CE on the gold answer (lower is better) |
| `custom`      | `function: "package.module:function"`, any keyword options | `score`: what the function returns |

Normalisation (exact_match, regex, f1_list items): Unicode NFKC, case-folded, surrounding whitespace and
one trailing period removed, inner runs of whitespace made one space. These rules are ours; the paper's
tasks keep their official metrics (`evaluation/metrics.py`).

`choice` parses as the JMED evaluator does: with one-character labels, the first character of the output
that is a label (labels A–F are exactly `evaluation.parse_choice`); with longer labels, the first label
found as a whole word, case-insensitive (as PubMedQA's yes/no/maybe). No label found → "None" (wrong).

A custom metric is imported by `importlib` (never `eval`) and must have the signature
`fn(gold: str, generation: str, **options) -> float` (higher is better); it receives the metric's other
options as keyword arguments. Example: `metric: {name: custom, function: "my_pkg.metrics:bleu", n: 2}`.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
import unicodedata
from collections.abc import Callable, Sequence

from distillkit_scd.evaluation.metrics import NONE_LABEL, Scoring, cohen_kappa, macro_f1

METRICS = ("exact_match", "choice", "regex", "f1_list", "none", "custom")
_ALLOWED = {"exact_match": (), "choice": ("labels", "kappa_weights"),
            "regex": ("pattern", "ignore_case", "apply_to_gold"), "f1_list": ("separator",), "none": (),
            "custom": None}  # custom: `function` plus any keyword options for it


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, one trailing period dropped (see the module docstring)."""
    text = " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The first label in `text` by the JMED rule (one-character labels) or as a whole word (longer ones)."""
    if all(len(label) == 1 for label in labels):
        return next((ch for ch in text if ch in labels), None)
    pattern = re.compile(r"\b(" + "|".join(re.escape(label) for label in labels) + r")\b", re.IGNORECASE)
    match = pattern.search(text)
    if match is None:
        return None
    return next(label for label in labels if label.casefold() == match.group(1).casefold())


def parse_list(text: str, separator: str = ",") -> tuple[list[str], bool]:
    """(items, parsed): a list literal (`ast.literal_eval`, never `eval`) when the text starts with "[",
    else the text split by `separator`; items normalised, empty items dropped."""
    text = str(text).strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return [], False
        if not isinstance(value, list):
            return [], False
        items = [str(v) for v in value]
    else:
        items = text.split(separator)
    return [x for x in (normalise(i) for i in items) if x], True


def set_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """F1 of two sets; 1.0 when both are empty, 0.0 when exactly one is."""
    g, p = set(gold), set(pred)
    if not g and not p:
        return 1.0
    matched = len(g & p)
    if matched == 0:
        return 0.0
    precision, recall = matched / len(p), matched / len(g)
    return 2 * precision * recall / (precision + recall)


def _records(preds: list, parsed: list[bool], key: str, values: list[float], extras: dict | None = None):
    samples = [{"prediction": p, "parsed": ok, "scores": {key: float(v)}} for p, ok, v in zip(preds, parsed, values)]
    metrics = {key: sum(values) / len(values), **(extras or {}), "unparsed": sum(not ok for ok in parsed)}
    return metrics, samples


def score_exact_match(golds, generations):
    preds = [normalise(t) for t in generations]
    values = [float(p == normalise(g)) for p, g in zip(preds, golds)]
    return _records(preds, [True] * len(preds), "exact_match", values)


def score_choice(golds, generations, labels: tuple[str, ...], kappa_weights: str | None = None):
    golds = [str(g).strip() for g in golds]
    bad = [(i, g) for i, g in enumerate(golds) if g not in labels]
    if bad:
        raise ValueError(f"metric choice: item {bad[0][0]}: gold {bad[0][1]!r} is not one of the labels {list(labels)}")
    found = [parse_label(t, labels) for t in generations]
    preds = [NONE_LABEL if x is None else x for x in found]
    extras = {"kappa": cohen_kappa(golds, preds, kappa_weights), "macro_f1": macro_f1(golds, preds)}
    values = [float(p == g) for p, g in zip(preds, golds)]
    return _records(preds, [x is not None for x in found], "accuracy", values, extras)


def _extract(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(str(text))
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def score_regex(golds, generations, pattern: re.Pattern, apply_to_gold: bool = False):
    found = [_extract(pattern, t) for t in generations]
    wanted = [(_extract(pattern, g) or g) if apply_to_gold else g for g in golds]
    values = [float(x is not None and normalise(x) == normalise(w)) for x, w in zip(found, wanted)]
    return _records([x if x is None else normalise(x) for x in found], [x is not None for x in found],
                    "exact_match", values)


def score_f1_list(golds, generations, separator: str = ","):
    gold_lists = [parse_list(g, separator)[0] for g in golds]
    checked = [parse_list(t, separator) for t in generations]
    values = [set_f1(g, p) for g, (p, _) in zip(gold_lists, checked)]
    return _records([p for p, _ in checked], [ok for _, ok in checked], "f1", values)


def import_function(path: str, where: str) -> Callable:
    """`package.module:function` → the function (importlib; the string is never evaluated)."""
    module_name, sep, attr = str(path).partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ValueError(f"{where}: expected 'package.module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{where}: cannot import module {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{where}: {module_name} has no function {attr!r}")
    return fn


def score_custom(golds, generations, fn: Callable, where: str, options: dict):
    values = []
    for i, (g, t) in enumerate(zip(golds, generations)):
        value = fn(str(g), t, **options)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{where}: item {i}: returned {value!r}; expected a finite number (higher is better)")
        values.append(float(value))
    return _records(list(generations), [True] * len(values), "score", values)


def _spec(metric) -> tuple[str, dict]:
    """`metric` option → (name, options)."""
    where = "task.options.metric"
    if metric is None:
        return "exact_match", {}
    if isinstance(metric, str):
        return ("custom", {"function": metric}) if ":" in metric else (metric, {})
    if isinstance(metric, dict) and isinstance(metric.get("name"), str):
        return metric["name"], {k: v for k, v in metric.items() if k != "name"}
    raise ValueError(f"{where}: expected a metric name or a mapping with 'name', got {metric!r}")


def build_chat_scoring(task: str, metric) -> Scoring:
    """The `Scoring` of a chat task from its `metric` option (see the module docstring).

    Raises:
        ValueError: an unknown metric or option, or a bad option value, naming `task.options.metric`.
    """
    name, opts = _spec(metric)
    where = f"task.options.metric ({name})"
    if name not in METRICS:
        raise ValueError(f"task.options.metric: expected one of {', '.join(METRICS)} or "
                         f"'package.module:function', got {name!r}")
    allowed = _ALLOWED[name]
    unknown = sorted(set(opts) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; allowed: {', '.join(allowed) or 'none'}")
    record = dict(opts)
    if name == "exact_match":
        return Scoring(task, name, record, ((f"{task} exact_match", "exact_match"),), score_exact_match)
    if name == "choice":
        labels = opts.get("labels", list("ABCDEF"))
        if (not isinstance(labels, list) or len(labels) < 2 or len(set(map(str, labels))) != len(labels)
                or not all(str(x).strip() for x in labels)):
            raise ValueError(f"{where}: labels: expected a list of at least two distinct non-empty labels, "
                             f"got {labels!r}")
        weights = opts.get("kappa_weights")
        if weights not in (None, "linear", "quadratic"):
            raise ValueError(f"{where}: kappa_weights: expected null, 'linear' or 'quadratic', got {weights!r}")
        labels = tuple(str(x).strip() for x in labels)
        record.update(labels=list(labels), kappa_weights=weights)
        fn = functools.partial(score_choice, labels=labels, kappa_weights=weights)
        return Scoring(task, name, record, ((f"{task} accuracy", "accuracy"),), fn)
    if name == "regex":
        if not isinstance(opts.get("pattern"), str) or not opts["pattern"]:
            raise ValueError(f"{where}: pattern: expected a regular expression string, got {opts.get('pattern')!r}")
        for flag in ("ignore_case", "apply_to_gold"):
            if not isinstance(opts.get(flag, False), bool):
                raise ValueError(f"{where}: {flag}: expected true/false, got {opts[flag]!r}")
        try:
            pattern = re.compile(opts["pattern"], re.IGNORECASE if opts.get("ignore_case") else 0)
        except re.error as err:
            raise ValueError(f"{where}: pattern {opts['pattern']!r} is not a valid regular expression ({err})") from None
        fn = functools.partial(score_regex, pattern=pattern, apply_to_gold=opts.get("apply_to_gold", False))
        return Scoring(task, name, record, ((f"{task} exact_match", "exact_match"),), fn)
    if name == "f1_list":
        separator = opts.get("separator", ",")
        if not isinstance(separator, str) or not separator:
            raise ValueError(f"{where}: separator: expected a non-empty string, got {separator!r}")
        return Scoring(task, name, record, ((f"{task} f1", "f1"),), functools.partial(score_f1_list, separator=separator))
    if name == "none":
        return Scoring(task, name, record, ((f"{task} loss", "loss"),), None, lower_is_better=True,
                       needs_generation=False)
    function = opts.get("function")
    fn = import_function(function, f"{where}: function")
    kwargs = {k: v for k, v in opts.items() if k != "function"}
    column = f"{task} {function.rpartition(':')[2]}"
    return Scoring(task, name, record, ((column, "score"),),
                   functools.partial(score_custom, fn=fn, where=f"{where} {function}", options=kwargs))
