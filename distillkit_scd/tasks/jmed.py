"""The five JMED-LLM tasks: `jmmlu`, `crade`, `rrtnm`, `smdis` (multiple choice) and `nrner` (NER).

Prompts are the official JMED-LLM ones (upstream `src/utils.py`), byte for byte: a system message and
a user message; the gold assistant turn is the `answer` cell. Two pools exist: the 100-item benchmark
files (`pool: benchmark`) and the full pools (`pool: all`, default, what the paper recipes use). Both
are split 80/20 **by source text**, so no text appears in train and test; seed 42; the id lists are
recorded in `split_info`. Option `split: rows` is the paper's plain row-level 80/20 split instead (test =
⌈0.2·n⌉: 137/326/65/3072/308 rows on the full pools; rows sharing a text may sit on both sides; the
paper recipes use it with `validation_fraction: 0`). The source text is the 「…」 block after the instruction line: RRTNM asks 3
questions (T/N/M) per radiology report (108 reports), SMDIS 8 (one per disease) per tweet (1920), CRADE
one per entity of a case report (147 reports), NRNER up to 3 (d, m-key, m-val) per nursing record (934).
JMMLU-Med questions stand alone and are grouped by their full text (identical questions stay together).

Sizes (train / validation / test) with the defaults (seed 42; test ≤ n − ⌊0.8·n⌋ rows, filled group by
group; validation 10% of train, also by source text), checked in `tests/test_tasks.py::JMED_SIZES`:

    pool all:  jmmlu 489/55/137  crade 1174/130/326  rrtnm 234/27/63  smdis 11064/1224/3072  nrner 1107/124/308
    benchmark: every task 72/8/20
"""

from __future__ import annotations

import ast
import csv
import functools
from pathlib import Path

from datasets import DatasetDict

from .common import carve_validation, chat_messages, limit_rows, pick_source, split_rows, to_dataset_dict

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
    """`質問: {question}\n選択肢:\n` then one `{letter}. {option}\n` line per non-empty option.

    Upstream drops empty option cells and letters the rest by position; empty cells only ever trail
    (RRTNM's N and M rows), which `_row` checks, so position and column letter agree.
    """
    lines = "".join(f"{letter}. {opt}\n" for letter, opt in zip("ABCDEF", [o for o in options if o]))
    return f"質問: {question}\n選択肢:\n{lines}"


def source_text(task: str, question: str) -> str:
    """The text a question is about, used to group rows so each text sits on one side of the split.

    For the tasks that quote a document it is everything after the instruction line (the 「…」 block);
    JMMLU-Med questions are their own source.
    """
    if task == "jmmlu" or "\n" not in question:
        return question
    return question.split("\n", 1)[1]


@functools.lru_cache(maxsize=16)
def _read_csv(path: Path) -> tuple[dict, ...]:
    """All records of a CSV (cached: the SMDIS pool has 15,360 rows and several tests read it)."""
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return tuple(csv.DictReader(fh))
    except FileNotFoundError:
        raise ValueError(f"missing data file {path}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a valid CSV file ({err})") from None


def _row(task: str, index: int, rec: dict, where: str, pool: str = "all", use_system_role: bool = True) -> dict:
    """One CSV record → a chat row. Row numbers in errors count data rows from 1 (header excluded)."""
    at = f"task {task}: {where}: data row {index + 1}"
    for key in ("tag", "question", "answer"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise ValueError(f"{at}: empty or missing column {key!r}")
    answer = rec["answer"]
    if task == "nrner":
        try:
            gold = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            gold = None
        if not isinstance(gold, list) or not gold or not all(isinstance(g, str) for g in gold):
            raise ValueError(f"{at}: answer {answer[:60]!r}: expected a non-empty Python list literal of strings")
        system, user = NER_SYSTEM, rec["question"]
    else:
        options = [rec.get(c) or "" for c in OPTION_COLUMNS]
        present = "".join(letter for letter, opt in zip("ABCDEF", options) if opt)
        if present != "ABCDEF"[: len(present)] or len(present) < 2:
            raise ValueError(f"{at}: options present for {present or 'no letter'}; expected at least optionA and "
                             "optionB and no empty column before a filled one")
        if len(answer) != 1 or answer not in "ABCDEF" or not options["ABCDEF".index(answer)]:
            raise ValueError(f"{at}: answer {answer!r}: expected one of the letters with an option ({present})")
        system, user = MC_SYSTEM, mc_user_message(rec["question"], options)
    return {
        "id": f"{task}-{index}" if pool == "all" else f"{task}-bench-{index}",  # ids never clash across pools
        "tag": rec["tag"],
        "answer": answer,
        "question": rec["question"],
        "messages": chat_messages(system, user, answer, use_system_role),
    }


def _records(task: str, source: str | None, pool: str) -> tuple[list[dict], str]:
    """Records of the task's CSV from a data root, a `jmed_llm/` folder, a CSV file, or a Hub dataset."""
    kind, path = pick_source(source, "jmed_llm", task, expected=f"{FILES[task][0]} and {FILES[task][1]}")
    if kind == "hub":
        from datasets import load_dataset

        return [dict(r) for r in load_dataset(source, split="train")], source
    bench, full = FILES[task]
    name = full if pool == "all" else bench
    if path.is_dir():
        folder = path / "jmed_llm" if (path / "jmed_llm").is_dir() else path
        file = folder / name
        if not file.is_file():
            raise ValueError(f"task {task}: expected {name} (pool {pool!r}) under {folder}; the folder must hold "
                             f"the JMED-LLM files {', '.join(f[0] for f in FILES.values())} and all/")
    else:
        file = path
    return list(_read_csv(file)), str(file)


def build_task(task: str, source: str | None = None, pool: str = "all", split: str = "by_source",
               test_fraction: float = 0.2, validation_fraction: float = 0.1, seed: int = 42,
               limit_train: int | None = None, limit_validation: int | None = None, limit_test: int | None = None,
               use_system_role: bool = True,
               **unknown) -> DatasetDict:
    """Load one JMED task; `split` is "by_source" (ours, leak-free) or "rows" (the paper's plain row split);
    `use_system_role=False` merges the system prompt into the user turn (upstream)."""
    if unknown:
        raise ValueError(f"task {task}: unknown option(s) {sorted(unknown)}; allowed: pool, split, test_fraction, "
                         "validation_fraction, seed, limit_train, limit_validation, limit_test, use_system_role")
    if pool not in ("all", "benchmark"):
        raise ValueError(f"task {task}: option pool: expected 'all' or 'benchmark', got {pool!r}")
    records, where = _records(task, source, pool)
    if not records:
        raise ValueError(f"task {task}: {where} has no rows")
    rows = [_row(task, i, rec, where, pool, use_system_role) for i, rec in enumerate(records)]
    group = lambda r: source_text(task, r["question"])  # noqa: E731
    train, test = split_rows(rows, split, group, test_fraction, seed, task)
    train, val = carve_validation(train, validation_fraction, seed, group_of=group if split == "by_source" else None)
    label = (lambda r: r["tag"]) if task == "nrner" else (lambda r: r["answer"])  # noqa: E731
    train = limit_rows(train, limit_train, "limit_train", seed, label)  # seeded, keeping the label mix
    val = limit_rows(val, limit_validation, "limit_validation", seed, label)
    test = limit_rows(test, limit_test, "limit_test", seed, label)
    how = "by source text" if split == "by_source" else "by row (the paper's split)"
    info = {"task": task, "source": where, "pool": pool, "split": split,
            "definition": f"{pool} pool, {1 - test_fraction:.0%}/{test_fraction:.0%} split {how}, "
            f"seed {seed}; validation {validation_fraction} of train {how.split(' (')[0]}"}
    return to_dataset_dict(train, val, test, info)
