"""Shared pieces of every task: the registry entry, deterministic splitting, Hub/local loading."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

DATA_ENV = "DISTILLKIT_SCD_DATA"


@dataclass(frozen=True)
class TaskSpec:
    """Everything the library knows about a task, in one place (scoring, report and plan read it here).

    name: registry key.
    kind: how outputs are scored: a key of `evaluation.metrics.SCORERS` ("choice", "yesno", "ner", "exact"), or
        "chosen" when the recipe's `task.options.metric` decides (`chat`; see `evaluation/chat_metrics.py`).
    max_new_tokens: default generation budget (`evaluation.max_new_tokens` overrides it).
    build: `(source, **options) -> DatasetDict`.
    columns: Table 1 columns as `(column name, per-sample score key)`, in the paper's order; the keys are
        the task's primary metrics, and checkpoint selection uses their mean. Empty for "chosen".
    kappa_weights: Cohen's kappa weights of a choice task: None, "linear" (CRADE's ordinal labels).
    train_rows: train-split rows with the default options, as documented in the task's module (what
        `plan` counts steps with when the data is not on this machine); None when it depends on the data.
    fetch: the `distillkit-scd data fetch` name that downloads the task's data (None: nothing to fetch).
    """

    name: str
    kind: str
    max_new_tokens: int
    build: Callable[..., DatasetDict]
    columns: tuple[tuple[str, str], ...] = ()
    kappa_weights: str | None = None
    train_rows: int | None = None
    fetch: str | None = None


def default_data_root() -> Path:
    """`$DISTILLKIT_SCD_DATA`, else `data/` in the working directory (what `distillkit-scd data fetch all
    --to data/` writes, run from the repository root)."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path("data")


def stable_shuffle(keys: Sequence[str], seed: int) -> list[str]:
    """Shuffle by a hash of (seed, key): independent of input order and of Python's hash seed."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())


def group_split(rows: list[dict[str, Any]], group_of: Callable[[dict], str], test_fraction: float,
                seed: int) -> tuple[list[dict], list[dict]]:
    """Split rows so that no group (source text) is in both parts, with at most n − ⌊(1−f)·n⌋ test rows.

    Groups are visited in a seeded hash order; a group goes to test while it still fits in the row
    quota (smaller groups later fill the remainder), otherwise to train. The split is thus a pure
    function of the data and the seed, and the test size is the quota or a few rows less.
    Row order inside each part: groups in visiting order, rows of a group in input order.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)
    quota = test_quota(len(rows), test_fraction)
    test, train = [], []
    for key in stable_shuffle(list(groups), seed):
        (test if len(test) + len(groups[key]) <= quota else train).extend(groups[key])
    return train, test


def test_quota(n: int, test_fraction: float) -> int:
    """Test rows of an n-row pool: n − ⌊(1−f)·n⌋, which is ⌈f·n⌉ (scikit-learn's `train_test_split`)."""
    return n - int(n * (1 - test_fraction))


def row_split(rows: list[dict[str, Any]], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A plain row-level split: ⌈f·n⌉ rows, chosen by a seeded hash order of their ids, go to test.

    The paper's split (its printed scores are exact fractions of these test sizes); rows that share a
    source text may land on both sides. Each part keeps the input order.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    chosen = set(stable_shuffle([str(r["id"]) for r in rows], seed)[: test_quota(len(rows), test_fraction)])
    return [r for r in rows if str(r["id"]) not in chosen], [r for r in rows if str(r["id"]) in chosen]


SPLITS = ("rows", "by_source")
"""`rows`: the paper's plain row-level split. `by_source`: ours, no source text on both sides."""


def split_rows(rows: list[dict], split: str, group_of: Callable[[dict], str], test_fraction: float, seed: int,
               task: str) -> tuple[list[dict], list[dict]]:
    """(train, test) by `split` ("rows" or "by_source")."""
    if split not in SPLITS:
        raise ValueError(f"task {task}: option split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if split == "rows":
        return row_split(rows, test_fraction, seed)
    return group_split(rows, group_of, test_fraction, seed)


def carve_validation(train: list[dict], fraction: float, seed: int, group_of=None) -> tuple[list, list]:
    """Hold out a validation subset of train (by group when given), deterministic by seed."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction: expected a number in [0, 1), got {fraction!r}")
    if fraction == 0:
        return train, []
    rest, val = group_split(train, group_of or (lambda r: r["id"]), fraction, seed + 1)
    return rest, val


def to_dataset_dict(train: list[dict], validation: list[dict], test: list[dict], info: dict) -> DatasetDict:
    """Build the DatasetDict and attach `split_info`: the definition, sizes and the id list of each split.

    Empty splits keep the columns of the others, so `split["answer"]` works on every split.
    """
    splits = {"train": train, "validation": validation, "test": test}
    built = {k: Dataset.from_list(v) for k, v in splits.items() if v}
    if not built:
        raise ValueError(f"task {info.get('task')}: every split is empty")
    features = next(iter(built.values())).features
    dd = DatasetDict({k: built.get(k, Dataset.from_dict({c: [] for c in features}, features=features))
                      for k in splits})
    dd.split_info = {**info, "sizes": {k: len(v) for k, v in splits.items()},
                     "ids": {k: [r["id"] for r in v] for k, v in splits.items()}}
    return dd


def stratified_quota(counts: dict[str, int], limit: int) -> dict[str, int]:
    """Rows per label for a cap of `limit`: proportional to `counts`, rounded by largest remainder (ties to
    the label that sorts first), so the quotas sum to `limit` exactly."""
    n = sum(counts.values())
    exact = {label: limit * c / n for label, c in counts.items()}
    quota = {label: int(x) for label, x in exact.items()}
    rest = sorted(counts, key=lambda label: (-(exact[label] - quota[label]), label))
    for label in rest[: limit - sum(quota.values())]:
        quota[label] += 1
    return quota


def limit_rows(rows: list[dict], limit: int | None, name: str, seed: int = 42,
               label_of: Callable[[dict], str] | None = None) -> list[dict]:
    """At most `limit` rows: a seeded sample (hash order of the ids, `stable_shuffle`), stratified by
    `label_of` when given so the capped split keeps the label mix; input order is kept.

    Not a prefix: data files can be sorted by label (PubMedQA's test file lists its 276 "yes" first) or
    by source (CRADE's first rows are one report).
    """
    if limit is None:
        return rows
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{name}: expected a positive integer, got {limit!r}")
    if limit >= len(rows):
        return rows
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(str(label_of(r)) if label_of else "", []).append(str(r["id"]))
    quota = stratified_quota({k: len(v) for k, v in groups.items()}, limit)
    keep = {i for k, ids in groups.items() for i in stable_shuffle(ids, seed)[: quota[k]]}
    return [r for r in rows if str(r["id"]) in keep]


def pick_source(source: str | None, default_subdir: str, task: str, expected: str = "") -> tuple[str, Path | None]:
    """Return ("local", path) or ("hub", None) for a recipe's `task.source`; `expected` names the files."""
    if source is None:
        path = default_data_root() / default_subdir
        if not path.exists():
            raise ValueError(
                f"task {task}: no data at {path} (expected {expected or 'the task files'} there); set "
                f"task.source to a local copy or a Hub dataset id, or set ${DATA_ENV} to the folder holding "
                "pubmedqa/ and jmed_llm/"
            )
        return "local", path
    path = Path(source).expanduser()
    if path.exists():
        return "local", path
    if source.startswith((".", "/", "~")):
        raise ValueError(f"task {task}: task.source {source!r} does not exist")
    return "hub", None


def chat_messages(system: str, user: str, answer: str, use_system_role: bool = True) -> list[dict]:
    """system + user + assistant turns; without a system role (e.g. Gemma) the system text leads the user
    turn, separated by a blank line, as JMED-LLM's `use_system_role=False` does."""
    prompt = ([{"role": "system", "content": system}, {"role": "user", "content": user}] if use_system_role
              else [{"role": "user", "content": f"{system}\n\n{user}"}])
    return [*prompt, {"role": "assistant", "content": answer}]
