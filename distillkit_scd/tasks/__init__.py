"""Task registry: `load_task(name, source=None, **options)` → DatasetDict(train, validation, test).

Every row has `id`, `messages` (chat turns; the last is the assistant's gold answer) and the task's gold
fields (`answer`, `tag`, …). `source` is a local path or a Hub dataset id read by the same loader;
`None` means the task's default (`$DISTILLKIT_SCD_DATA`, else `data/`, where `distillkit-scd data fetch all
--to data/` writes; the generator for `synthetic`). The split definition and its id lists are attached as `dataset_dict.split_info`.
"""

from __future__ import annotations

import functools

from datasets import DatasetDict

from . import chat, jmed, pubmedqa, synthetic
from .common import TaskSpec

_JMED_FACTS = {  # task: (Table 1 column, kappa weights as JMED-LLM scores it, documented train rows)
    "jmmlu": ("JMMLU", None, 489),
    "crade": ("CRADE", "linear", 1174),
    "rrtnm": ("RRTNM", None, 234),
    "smdis": ("SMDIS", None, 11064),
}

JMED_MAX_NEW_TOKENS = 512
"""The JMED-LLM toolkit's generation budget (upstream `max_new_tokens=512`); the answer is parsed out of
whatever the model writes. PubMedQA's 64 is ours (no official toolkit; room for a sentence around the word).
Generation stops at end-of-turn, so a larger budget costs only where answers run on."""

TASKS: dict[str, TaskSpec] = {
    "synthetic": TaskSpec("synthetic", "exact", 8, synthetic.build, columns=(("synthetic", "accuracy"),),
                          train_rows=540),
    "pubmedqa": TaskSpec("pubmedqa", "yesno", 64, pubmedqa.build, columns=(("PubmedQA", "accuracy"),),
                         train_rows=450, fetch="pubmedqa"),
    **{name: TaskSpec(name, "choice", JMED_MAX_NEW_TOKENS, functools.partial(jmed.build_task, name), columns=((column, "accuracy"),),
                      kappa_weights=weights, train_rows=rows, fetch="jmed")
       for name, (column, weights, rows) in _JMED_FACTS.items()},
    "nrner": TaskSpec("nrner", "ner", JMED_MAX_NEW_TOKENS, functools.partial(jmed.build_task, "nrner"),
                      columns=(("NRNER exact", "exact_f1"), ("NRNER partial", "partial_f1")), train_rows=1107,
                      fetch="jmed"),
    "chat": TaskSpec("chat", "chosen", 64, chat.build),  # your own data; columns follow `options.metric`
}
"""The registry. The paper reports accuracy for every classification task (kappa and macro-F1 are
recorded as extras) and NRNER's exact and partial F1 as two columns. Train rows: the sizes documented in
`jmed.py` / `pubmedqa.py` / `synthetic.py` with the default options (seed 42, full JMED pools)."""


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"task.name: expected one of {', '.join(sorted(TASKS))}, got {name!r}")
    return TASKS[name]


def load_task(name: str, source: str | None = None, **options) -> DatasetDict:
    """Load a registered task with its official split (see the module docstring).

    Common options: `split` ("by_source", ours, or "rows", the paper's row-level split), `validation_fraction`
    (0.1, carved from train), `seed` (42), `limit_train` / `limit_validation` /
    `limit_test` (seeded caps that keep the label mix, for smoke runs); JMED tasks also `pool` ("all" or "benchmark") and
    `test_fraction` (0.2); `synthetic` takes `num_train` / `num_test`; `chat` takes `metric`, `config`,
    `splits`, `test_fraction`, `group_by`, `stratify_by` (see `tasks/chat.py`).

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
