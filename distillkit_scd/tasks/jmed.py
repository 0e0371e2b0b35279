"""The five JMED-LLM tasks: `jmmlu`, `crade`, `rrtnm`, `smdis` (multiple choice) and `nrner` (NER).

Prompts are the official JMED-LLM ones (upstream `src/utils.py`), byte for byte: a system message and
a user message; the gold assistant turn is the `answer` cell. Two pools exist: the 100-item benchmark
files (`pool: benchmark`) and the full pools (`pool: all`, default, what the paper recipes use). Both
are split 80/20 **by source text** (the report / tweet / record after the instruction line), so no text
appears in train and test; seed 42; the id lists are recorded in `split_info`.
"""

from __future__ import annotations

import ast
import csv
import functools
from pathlib import Path

from datasets import DatasetDict

from .common import carve_validation, group_split, limit_rows, pick_source, to_dataset_dict

MC_SYSTEM = (
    "与えられた医学に関する質問と選択肢から、最も適切な回答を選択してください。"
    "なお、回答には選択肢のアルファベット（例：A）のみを含め、他には何も含めないことを厳守してください。"
)
NER_SYSTEM = (
    "与えられた医学に関する質問から、最も適切な回答をしてください。"
    "なお、回答にはPythonのリスト形式（例：['回答1', '回答2']）のみを含め、他には何も含めないことを厳守してください。"
)
FILES = {  # task: (benchmark file, full-pool file)
    "jmmlu": ("jmmlu_med.csv", "all/JMMLU-Med.csv"),
    "crade": ("crade.csv", "all/CRADE.csv"),
    "rrtnm": ("rrtnm.csv", "all/RRTNM.csv"),
    "smdis": ("smdis.csv", "all/SMDIS.csv"),
    "nrner": ("nrner.csv", "all/NRNER.csv"),
}
OPTION_COLUMNS = [f"option{c}" for c in "ABCDEF"]


def mc_user_message(question: str, options: list[str]) -> str:
    """`質問: {question}\\n選択肢:\\n` then one `{letter}. {option}\\n` line per non-empty option."""
    lines = "".join(f"{letter}. {opt}\n" for letter, opt in zip("ABCDEF", options) if opt)
    return f"質問: {question}\n選択肢:\n{lines}"


def source_text(question: str) -> str:
    """The text a question is about: everything after the instruction line (the whole question if none).

    RRTNM asks 3 questions per report, SMDIS 8 per tweet, CRADE several per case report and NRNER
    several per record; grouping by this text keeps each text on one side of the split.
    """
    return question.split("\n", 1)[1] if "\n" in question else question


@functools.lru_cache(maxsize=16)
def _read_csv(path: Path) -> tuple[dict, ...]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return tuple(csv.DictReader(fh))
    except FileNotFoundError:
        raise ValueError(f"missing data file {path}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None


def _row(task: str, index: int, rec: dict, where: str) -> dict:
    for key in ("tag", "question", "answer"):
        if not rec.get(key):
            raise ValueError(f"task {task}: {where} row {index + 2}: empty or missing column {key!r}")
    if task == "nrner":
        try:
            gold = ast.literal_eval(rec["answer"])
        except (ValueError, SyntaxError):
            gold = None
        if not isinstance(gold, list) or not all(isinstance(g, str) for g in gold):
            raise ValueError(f"task nrner: {where} row {index + 2}: answer {rec['answer'][:60]!r} is not a "
                             "Python list literal of strings")
        system, user = NER_SYSTEM, rec["question"]
    else:
        options = [rec.get(c) or "" for c in OPTION_COLUMNS]
        if rec["answer"] not in "ABCDEF" or len(rec["answer"]) != 1:
            raise ValueError(f"task {task}: {where} row {index + 2}: answer {rec['answer']!r} is not a letter A-F")
        system, user = MC_SYSTEM, mc_user_message(rec["question"], options)
    return {
        "id": f"{task}-{index}",
        "tag": rec["tag"],
        "answer": rec["answer"],
        "question": rec["question"],
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": rec["answer"]},
        ],
    }


def _records(task: str, source: str | None, pool: str) -> tuple[list[dict], str]:
    kind, path = pick_source(source, "jmed_llm", task)
    if kind == "hub":
        from datasets import load_dataset

        return list(load_dataset(source, split="train")), source
    bench, full = FILES[task]
    file = path / (full if pool == "all" else bench) if path.is_dir() else path
    return list(_read_csv(file)), str(file)


def build_task(task: str, source: str | None = None, pool: str = "all", test_fraction: float = 0.2,
               validation_fraction: float = 0.1, seed: int = 42, limit_train: int | None = None,
               limit_test: int | None = None, **unknown) -> DatasetDict:
    if unknown:
        raise ValueError(f"task {task}: unknown option(s) {sorted(unknown)}; allowed: pool, test_fraction, "
                         "validation_fraction, seed, limit_train, limit_test")
    if pool not in ("all", "benchmark"):
        raise ValueError(f"task {task}: option pool: expected 'all' or 'benchmark', got {pool!r}")
    records, where = _records(task, source, pool)
    if not records:
        raise ValueError(f"task {task}: {where} has no rows")
    rows = [_row(task, i, rec, where) for i, rec in enumerate(records)]
    group = lambda r: source_text(r["question"])  # noqa: E731
    train, test = group_split(rows, group, test_fraction, seed)
    train, val = carve_validation(train, validation_fraction, seed, group_of=group)
    train = limit_rows(train, limit_train, "limit_train")
    test = limit_rows(test, limit_test, "limit_test")
    info = {"task": task, "source": where, "pool": pool,
            "definition": f"{pool} pool, {1 - test_fraction:.0%}/{test_fraction:.0%} split by source text, "
            f"seed {seed}; validation {validation_fraction} of train by source text"}
    return to_dataset_dict(train, val, test, info)
