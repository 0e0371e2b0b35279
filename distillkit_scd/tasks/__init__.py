"""Task registry: `load_task(name, source=None, **options)` → DatasetDict(train, validation, test).

Every row has `id`, `messages` (chat turns; the last is the assistant's gold answer) and the task's gold
fields (`answer`, `tag`, …). `source` is a local path or a Hub dataset id read by the same loader;
`None` means the task's default (`../shared/data` or `$DISTILLKIT_SCD_DATA`; the generator for
`synthetic`). The split definition and its id lists are attached as `dataset_dict.split_info`.
"""

from __future__ import annotations

import functools

from datasets import DatasetDict

from . import jmed, pubmedqa, synthetic
from .common import TaskSpec

TASKS: dict[str, TaskSpec] = {
    "synthetic": TaskSpec("synthetic", "exact", 8, synthetic.build),
    "pubmedqa": TaskSpec("pubmedqa", "yesno", 8, pubmedqa.build),
    **{name: TaskSpec(name, "choice", 8, functools.partial(jmed.build_task, name))
       for name in ("jmmlu", "crade", "rrtnm", "smdis")},
    "nrner": TaskSpec("nrner", "ner", 128, functools.partial(jmed.build_task, "nrner")),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"task.name: expected one of {', '.join(sorted(TASKS))}, got {name!r}")
    return TASKS[name]


def load_task(name: str, source: str | None = None, **options) -> DatasetDict:
    """Load a registered task with its official split (see the module docstring).

    Common options: `split` ("by_source", ours, or "rows", the paper's row-level split), `validation_fraction`
    (0.1, carved from train), `seed` (42), `limit_train` /
    `limit_test` (caps for smoke runs); JMED tasks also `pool` ("all" or "benchmark") and
    `test_fraction` (0.2); `synthetic` takes `num_train` / `num_test`.

    Raises:
        ValueError: unknown task or option, missing data files, or a malformed row (file and row named).
    """
    return get_task(name).build(source, **options)


def split_definition(name: str, source: str | None = None, **options) -> dict:
    """The JSON-able split definition of a task: how it was made, sizes, and the id list of each split.

    The split is a pure function of the data and the options (seed included), so saving this next to a
    run records exactly which rows were trained and tested on.
    """
    return load_task(name, source, **options).split_info


__all__ = ["TASKS", "TaskSpec", "get_task", "load_task", "split_definition"]
