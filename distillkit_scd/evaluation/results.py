"""The results JSON of one (row, task) evaluation: schema, atomic write, validated read.

One file per Table 1 cell group, `RUN_DIR/results/<row>/<task>.json`:

```
{"task": "crade", "row": "scd_aw",
 "split": {"definition": "...", "sizes": {"train": .., "validation": .., "test": ..}},
 "model": {"path": "...", "checkpoint": "step-120"},
 "metrics": {"accuracy": .., "kappa": .., "unparsed": ..},          # on the test split
 "undefined_metrics": {"kappa": "why"},    # optional: extra metrics that are null (0/0), and why
 "samples": [{"id", "gold", "generation", "prediction", "parsed", "scores": {"accuracy": 1.0}}, ...],
 "generation": {"max_new_tokens": .., "batch_size": .., "decoding": "greedy"},
 "scoring": {"metric": "choice", "options": {"kappa_weights": "linear"},
             "columns": [["CRADE", "accuracy"]], "lower_is_better": false},
 "versions": {"python", "torch", "transformers", "trl", "distillkit_scd"},
 "selection": {"by": "...", "select_by": "validation", "protocol": "clean",       # optional
               "protocols": {"paper": {"checkpoint", "index", "metrics", "samples"}, "clean": {...} | null},
               "candidates": [...]}}
```

`scoring` records the metric, its options and the Table 1 columns (`(column, per-sample score key)`);
the score keys are the primary metrics. A file without it (written before it existed) takes them from
the task's registry entry. Every primary metric is the mean of the per-sample score of the same name;
`load_results` checks that, so a Table 1 cell can always be recomputed from the samples.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

from distillkit_scd.utils.atomic import atomic_write_json

REQUIRED = {"task": str, "row": str, "split": dict, "model": dict, "metrics": dict, "samples": list,
            "generation": dict, "versions": dict}
SAMPLE_KEYS = ("id", "gold", "generation", "prediction", "scores")


def versions() -> dict[str, str]:
    """Versions of the stack that produced a result (recorded in every results file)."""
    import torch
    import transformers
    import trl

    from distillkit_scd import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "distillkit_scd": __version__}


def build_results(task: str, row: str, split: dict, model: dict, metrics: dict, samples: list[dict],
                  generation: dict, selection: dict | None = None, scoring: dict | None = None) -> dict:
    """Assemble a results dict in the schema above (versions filled in) and validate it.

    `scoring` is `Scoring.describe()`; None takes the task's registry default (not for `chat`).
    """
    if scoring is None:
        from distillkit_scd.evaluation.scoring import scoring_for

        _registry_columns(task, "build_results")  # refuses a task whose metric the recipe chooses
        scoring = scoring_for(task).describe()
    metrics, undefined = undefined_metrics(metrics)
    result = {"task": task, "row": row, "split": split, "model": model, "metrics": metrics, "samples": samples,
              "generation": generation, "versions": versions(), "scoring": scoring}
    if undefined:
        result["undefined_metrics"] = undefined
    if selection is not None:
        result["selection"] = selection
    validate_results(result, "<build_results>")
    return result


UNDEFINED_REASONS = {
    "kappa": "Cohen's kappa is 0/0 (chance agreement 1): every prediction and every gold label fall in one "
             "class; scikit-learn returns NaN",
}
"""Why a metric can be undefined; a NaN metric is written as null with this reason (strict JSON)."""


def undefined_metrics(metrics: dict) -> tuple[dict, dict[str, str]]:
    """(metrics with NaN/inf values as None, {name: why it is undefined}) for the results file."""
    clean, why = {}, {}
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            clean[name] = None
            why[name] = UNDEFINED_REASONS.get(name, f"the value was {value!r}")
        else:
            clean[name] = value
    return clean, why


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def table_columns(data: dict, where: str = "<results>") -> list[tuple[str, str]]:
    """The Table 1 columns `(column, per-sample score key)` of a results dict: its `scoring` record, else
    the registry entry of its task (files written before results recorded their scoring)."""
    scoring = data.get("scoring")
    if scoring is None:
        return _registry_columns(data["task"], where)
    columns = scoring.get("columns") if isinstance(scoring, dict) else None
    if (not isinstance(columns, list) or not columns
            or not all(isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in columns)):
        raise ValueError(f"{where}: scoring.columns = {columns!r}, expected a non-empty list of [column, score key]")
    return [tuple(c) for c in columns]


def _registry_columns(task: str, where: str) -> list[tuple[str, str]]:
    from distillkit_scd.tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
    if not TASKS[task].columns:
        raise ValueError(f"{where}: task {task!r} scores with the metric its recipe chooses; a 'scoring' record "
                         "(metric, options, columns) is required")
    return list(TASKS[task].columns)


def primary_keys(data: dict, where: str = "<results>") -> tuple[str, ...]:
    return tuple(key for _, key in table_columns(data, where))


def validate_results(data: dict, where: str) -> None:
    """Raise ValueError naming `where`, the field and the bad value if `data` breaks the schema."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key, kind in REQUIRED.items():
        if key not in data:
            raise ValueError(f"{where}: results file lacks field {key!r} (required: {', '.join(REQUIRED)})")
        if not isinstance(data[key], kind):
            raise ValueError(f"{where}: field {key!r} is {type(data[key]).__name__}, expected {kind.__name__}")
    task = data["task"]
    primary = primary_keys(data, where)
    if "path" not in data["model"]:
        raise ValueError(f"{where}: field 'model' lacks 'path'")
    if "selection" in data and not isinstance(data["selection"], dict):
        raise ValueError(f"{where}: field 'selection' is {type(data['selection']).__name__}, expected dict")
    for name, value in data["metrics"].items():
        if not _is_number(value) and not (value is None and name not in primary):
            raise ValueError(f"{where}: metrics.{name} = {value!r}, expected a number (null only for an "
                             "undefined extra metric such as kappa)")
    samples = data["samples"]
    if not samples:
        raise ValueError(f"{where}: 'samples' is empty (expected one record per test item)")
    for i, s in enumerate(samples):
        missing = [k for k in SAMPLE_KEYS if not isinstance(s, dict) or k not in s]
        if missing:
            raise ValueError(f"{where}: samples[{i}] lacks {missing} (required: {', '.join(SAMPLE_KEYS)})")
        for key in primary:
            if not _is_number(s["scores"].get(key)):
                raise ValueError(f"{where}: samples[{i}].scores.{key} = {s['scores'].get(key)!r}, expected a number")
    ids = [s["id"] for s in samples]
    if len(set(map(str, ids))) != len(ids):
        raise ValueError(f"{where}: sample ids are not unique")
    for key in primary:
        if key not in data["metrics"]:
            raise ValueError(f"{where}: metrics lacks the primary metric {key!r} of task {task!r}")
        mean = sum(s["scores"][key] for s in samples) / len(samples)
        if not math.isclose(mean, data["metrics"][key], rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(f"{where}: metrics.{key} = {data['metrics'][key]!r} but the samples average to {mean!r}")


def write_results(path: str | Path, result: dict) -> Path:
    """Validate and write atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    validate_results(result, str(path))
    return atomic_write_json(path, result, indent=1, ensure_ascii=False)


def load_results(path: str | Path) -> dict:
    """Read a results file and validate it; ValueError naming the file if unreadable or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable results JSON file ({err})") from None
    validate_results(data, str(path))
    return data
