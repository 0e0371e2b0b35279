"""`chat`: your own chat data — any dataset of conversations whose last assistant turn is the gold answer.

Rows (each file record or dataset row) have either
- `messages`: a list of `{role, content}` turns, roles `system` / `user` / `assistant`, the last an
  assistant turn (the gold answer; earlier assistant turns are context), or
- `prompt` and `completion`: strings (a user turn and the assistant's answer; an optional `system`
  column leads), or TRL's conversational form (lists of turns).
An optional `id` column names rows (ids must be unique); otherwise ids are `<file stem or split>-<row>`.
A row without an assistant turn at the end, with an empty answer, an unknown role or a missing column
is refused with the file and row named (rows count from 1; JSONL rows are line numbers).

`task.source` is a file (`.jsonl`, `.json` — a list of records —, `.parquet`, `.csv` with `messages` as a
JSON string), a folder of such files, or a Hub dataset id (`options.config` names its configuration).
Splits: the dataset's own where present — files named `train*`, `validation*`/`valid*`/`dev*`, `test*`
(a Hub download's `data/train-00000-of-00001.parquet` counts), or the Hub splits; `options.splits` maps
`train` / `validation` / `test` to other names. A missing test split is carved from train
(`test_fraction`, default 0.2), a missing validation split likewise (`validation_fraction`, 0.1), seeded
(`seed`), optionally keeping each value of a column on one side (`group_by`) or carving each value's
share separately (`stratify_by`). The metric is the `metric` option (see `evaluation/chat_metrics.py`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from datasets import DatasetDict

from .common import group_split, limit_rows, pick_source, to_dataset_dict

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}
ROLES = ("system", "user", "assistant")
OPTIONS = ("metric", "config", "splits", "test_fraction", "validation_fraction", "seed", "group_by", "stratify_by",
           "limit_train", "limit_validation", "limit_test")

Record = tuple[str, dict]  # (where: "file: row N", record)


# ------------------------------------------------------------------------------------------ reading


def read_file(path: Path) -> list[Record]:
    """Every record of one data file, each with its place ("FILE: row N" / "FILE: line N")."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            out = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    out.append((f"{path}: line {n}", _json(line, f"{path}: line {n}")))
            return out
        if suffix == ".json":
            data = _json(path.read_text(encoding="utf-8"), str(path))
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
            return [(f"{path}: row {n}", rec) for n, rec in enumerate(data, 1)]
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as fh:
                return [(f"{path}: row {n}", rec) for n, rec in enumerate(csv.DictReader(fh), 1)]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return [(f"{path}: row {n}", rec) for n, rec in enumerate(pq.read_table(path).to_pylist(), 1)]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    except (OSError, csv.Error) as err:
        raise ValueError(f"{path}: cannot read ({err})") from None
    except Exception as err:  # pyarrow's own errors on a damaged Parquet file
        if suffix == ".parquet":
            raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
        raise
    raise ValueError(f"{path}: expected a {', '.join(EXTENSIONS)} file")


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from None


def split_of(path: Path, names: dict[str, str]) -> str | None:
    """Which split a file belongs to by its name (`train.jsonl`, `test-00000-of-00001.parquet`), or None."""
    stem = path.name.lower().split(".")[0].split("-")[0]
    for split, aliases in SPLIT_ALIASES.items():
        if stem in ((names[split].lower(),) if split in names else aliases):
            return split
    return None


def read_folder(folder: Path, names: dict[str, str]) -> dict[str, list[Record]]:
    """{split: records} from a folder's data files (recursively); one pool ("all") when no file names a split."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ValueError(f"task chat: {folder} holds no {', '.join(EXTENSIONS)} files")
    splits = {p: split_of(p, names) for p in files}
    named = [p for p, s in splits.items() if s]
    if named and len(named) != len(files):
        loose = [str(p) for p, s in splits.items() if not s]
        raise ValueError(f"task chat: {folder}: files {loose[:3]} belong to no split while others do "
                         f"({', '.join(str(p) for p in named[:3])}); name every file train*/validation*/test* or none")
    out: dict[str, list[Record]] = {}
    for p in files:
        out.setdefault(splits[p] or "all", []).extend(read_file(p))
    return out


def hub_records(dataset_dict, source: str, names: dict[str, str]) -> dict[str, list[Record]]:
    """{split: records} from a loaded Hub `DatasetDict` (or anything mapping split names to row lists)."""
    out: dict[str, list[Record]] = {}
    available = list(dataset_dict)
    for split in ("train", "validation", "test"):
        candidates = (names[split],) if split in names else SPLIT_ALIASES[split]
        found = next((c for c in candidates if c in available), None)
        if found is not None:
            out[split] = [(f"{source} split {found}: row {n}", dict(r)) for n, r in enumerate(dataset_dict[found], 1)]
        elif split in names:
            raise ValueError(f"task chat: {source}: option splits.{split} = {names[split]!r} is not a split of the "
                             f"dataset (it has {', '.join(available)})")
    if "train" not in out:
        raise ValueError(f"task chat: {source}: no train split (it has {', '.join(available)}); map one with "
                         "options.splits.train")
    return out


# ------------------------------------------------------------------------------------------ rows


def to_messages(rec: dict, at: str) -> list[dict]:
    """A record's chat turns, checked: known roles, string contents, a non-empty final assistant turn."""
    if not isinstance(rec, dict):
        raise ValueError(f"{at}: expected a record (mapping), got {type(rec).__name__}")
    if rec.get("messages") is not None:
        turns = rec["messages"]
        if isinstance(turns, str):  # CSV cells hold JSON
            turns = _json(turns, f"{at}: column messages")
        turns = _turns(turns, at, "messages")
    elif "prompt" in rec and "completion" in rec:
        prompt, completion = rec["prompt"], rec["completion"]
        turns = ([{"role": "system", "content": rec["system"]}] if isinstance(rec.get("system"), str)
                 and rec["system"].strip() else [])
        turns += ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else _turns(prompt, at, "prompt"))
        turns += ([{"role": "assistant", "content": completion}] if isinstance(completion, str)
                  else _turns(completion, at, "completion"))
    else:
        raise ValueError(f"{at}: expected a 'messages' column or 'prompt' and 'completion' columns, got columns "
                         f"{sorted(rec)}")
    if not turns or turns[-1]["role"] != "assistant":
        raise ValueError(f"{at}: the last turn must be the assistant's answer, got "
                         f"{turns[-1]['role'] if turns else 'no turns'}")
    if not turns[-1]["content"].strip():
        raise ValueError(f"{at}: the assistant's answer (last turn) is empty")
    if not any(t["role"] == "user" for t in turns[:-1]):
        raise ValueError(f"{at}: no user turn before the assistant's answer")
    return turns


def _turns(value, at: str, column: str) -> list[dict]:
    if not isinstance(value, list):
        raise ValueError(f"{at}: column {column}: expected a list of {{role, content}} turns, got {value!r:.80}")
    turns = []
    for k, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise ValueError(f"{at}: {column}[{k}]: expected {{role, content}} with string content, got {turn!r:.80}")
        if turn.get("role") not in ROLES:
            raise ValueError(f"{at}: {column}[{k}]: unknown role {turn.get('role')!r}; expected one of {', '.join(ROLES)}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def to_row(rec: dict, at: str, default_id: str, keys: dict[str, str]) -> dict:
    """A record → `{id, messages, answer}` (+ `group` / `tag` for the `group_by` / `stratify_by` columns)."""
    messages = to_messages(rec, at)
    row = {"id": str(rec["id"]) if rec.get("id") not in (None, "") else default_id, "messages": messages,
           "answer": messages[-1]["content"]}
    for key, column in keys.items():
        if rec.get(column) in (None, ""):
            raise ValueError(f"{at}: column {column!r} (options.{'group_by' if key == 'group' else 'stratify_by'}) is "
                             "missing or empty")
        row[key] = str(rec[column])
    return row


def _rows(records: list[Record], split: str, keys: dict[str, str]) -> list[dict]:
    rows = []
    for n, (at, rec) in enumerate(records, 1):
        file = at.split(": ")[0]
        stem = Path(file).stem if split == "all" else split
        rows.append(to_row(rec, at, f"{stem}-{n}", keys))
    return rows


def stratified_split(rows: list[dict], fraction: float, seed: int, key: str) -> tuple[list[dict], list[dict]]:
    """Carve `fraction` of each stratum (`row[key]`) separately, so every stratum keeps its share."""
    strata: dict[str, list[dict]] = {}
    for row in rows:
        strata.setdefault(row[key], []).append(row)
    rest, carved = [], []
    for value in sorted(strata):
        if len(strata[value]) == 1:  # a one-row stratum cannot be split: it stays in the larger part
            rest.extend(strata[value])
            continue
        a, b = group_split(strata[value], lambda r: r["id"], fraction, seed)
        rest.extend(a)
        carved.extend(b)
    return rest, carved


# ------------------------------------------------------------------------------------------ the task


def _check_fraction(name: str, value, zero_ok: bool) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (0 <= value < 1 if zero_ok else 0 < value < 1):
        raise ValueError(f"task chat: option {name}: expected a number in {'[0' if zero_ok else '(0'}, 1), got {value!r}")


def build(source: str | None = None, metric=None, config: str | None = None, splits: dict | None = None,
          test_fraction: float = 0.2, validation_fraction: float = 0.1, seed: int = 42, group_by: str | None = None,
          stratify_by: str | None = None, limit_train: int | None = None, limit_validation: int | None = None,
          limit_test: int | None = None, **unknown) -> DatasetDict:
    """Load a chat dataset (see the module docstring); `metric` is checked here and used by scoring."""
    from distillkit_scd.evaluation.chat_metrics import build_chat_scoring

    if unknown:
        raise ValueError(f"task chat: unknown option(s) {sorted(unknown)}; allowed: {', '.join(OPTIONS)}")
    if source is None:
        raise ValueError("task chat: task.source is required: a .jsonl/.json/.parquet/.csv file, a folder of them, "
                         "or a Hub dataset id")
    build_chat_scoring("chat", metric)  # a bad metric fails at load (and so at `validate`), not after training
    if group_by and stratify_by:
        raise ValueError("task chat: options group_by and stratify_by: expected at most one of them")
    _check_fraction("test_fraction", test_fraction, zero_ok=False)
    _check_fraction("validation_fraction", validation_fraction, zero_ok=True)
    names = dict(splits or {})
    if set(names) - set(SPLIT_ALIASES) or not all(isinstance(v, str) for v in names.values()):
        raise ValueError(f"task chat: option splits: expected a mapping of train/validation/test to split names, "
                         f"got {splits!r}")
    if Path(source).suffix.lower() in EXTENSIONS and not Path(source).expanduser().exists():
        raise ValueError(f"task chat: task.source {source!r} does not exist")
    kind, path = pick_source(source, "", "chat")
    if kind == "hub":
        from datasets import load_dataset

        found = hub_records(load_dataset(source, config), source, names)
    elif config is not None:
        raise ValueError(f"task chat: option config ({config!r}) applies to a Hub dataset; {path} is local")
    elif path.is_dir():
        found = read_folder(path, names)
    else:
        found = {"all": read_file(path)}
    keys = {k: c for k, c in (("group", group_by), ("tag", stratify_by)) if c}
    parts = {split: _rows(records, split, keys) for split, records in found.items()}
    ids = [r["id"] for rows in parts.values() for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"task chat: {source}: id {dup!r} appears more than once; ids must be unique")
    train = parts.get("train", parts.get("all", []))
    if not train:
        raise ValueError(f"task chat: {source} has no rows")
    carve = ((lambda rows, f, s: stratified_split(rows, f, s, "tag")) if stratify_by else
             (lambda rows, f, s: group_split(rows, (lambda r: r["group"]) if group_by else (lambda r: r["id"]), f, s)))
    how = []
    if "test" in parts:
        test = parts["test"]
        how.append("test: the dataset's own")
    else:
        train, test = carve(train, test_fraction, seed)
        how.append(f"test: {test_fraction} of the rows")
    if "validation" in parts:
        val = parts["validation"]
        how.append("validation: the dataset's own")
    elif validation_fraction == 0:
        val = []
    else:
        train, val = carve(train, validation_fraction, seed + 1)  # as `carve_validation` seeds it
        how.append(f"validation: {validation_fraction} of train")
    by = f" by {group_by!r}" if group_by else f" stratified by {stratify_by!r}" if stratify_by else ""
    info = {"task": "chat", "source": str(path or source),
            "definition": f"{'; '.join(how)}; carved{by} with seed {seed}"}
    label = (lambda r: r["tag"]) if stratify_by else None  # capped splits keep the strata's mix
    return to_dataset_dict(limit_rows(train, limit_train, "limit_train", seed, label),
                           limit_rows(val, limit_validation, "limit_validation", seed, label),
                           limit_rows(test, limit_test, "limit_test", seed, label), info)
