"""`pubmedqa`: PubMedQA PQA-L with the official 500/500 split.

test = the keys of `test_ground_truth.json` (authoritative); train = the other 500 PMIDs of
`ori_pqal.json`; a validation subset is carved from train. The prompt is ours (upstream defines none):
the question and the labelled abstract sections; the gold answer is `final_decision`.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict

from .common import SPLITS, carve_validation, chat_messages, limit_rows, pick_source, to_dataset_dict

SYSTEM = (
    "You are a biomedical research assistant. Read the abstract and answer the research question "
    "with exactly one word: yes, no, or maybe."
)
LABELS = ("yes", "no", "maybe")


def format_user(question: str, contexts: list[str], labels: list[str]) -> str:
    sections = "\n".join(f"{label}: {text}" for label, text in zip(labels, contexts))
    return f"Question: {question}\nAbstract:\n{sections}\nAnswer (yes, no, or maybe):"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"task pubmedqa: missing file {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"task pubmedqa: {path} is not valid UTF-8 JSON ({err})") from None


def _load_local(root: Path) -> tuple[dict, list[str]]:
    """`root` is the data root, the `pubmedqa/` folder, or one of its two JSON files."""
    if root.is_file():
        root = root.parent
    if (root / "pubmedqa").is_dir():
        root = root / "pubmedqa"
    if not (root / "ori_pqal.json").is_file() or not (root / "test_ground_truth.json").is_file():
        raise ValueError(f"task pubmedqa: expected ori_pqal.json and test_ground_truth.json (PubMedQA PQA-L) "
                         f"in {root}")
    pqal = _read_json(root / "ori_pqal.json")
    gt = _read_json(root / "test_ground_truth.json")
    if not isinstance(pqal, dict) or not isinstance(gt, dict):
        raise ValueError(f"task pubmedqa: {root}: ori_pqal.json and test_ground_truth.json must be JSON objects "
                         "keyed by PMID")
    missing = [k for k in gt if k not in pqal]
    if missing:
        raise ValueError(f"task pubmedqa: {root / 'test_ground_truth.json'}: PMIDs not in ori_pqal.json: "
                         f"{missing[:5]}")
    for pmid, label in gt.items():
        if pqal[pmid].get("final_decision") != label:
            raise ValueError(f"task pubmedqa: {root / 'test_ground_truth.json'}: PMID {pmid}: label {label!r} "
                             f"differs from final_decision {pqal[pmid].get('final_decision')!r} in ori_pqal.json")
    return pqal, list(gt)


def official_test_ids() -> list[str]:
    """The 500 official test PMIDs, shipped with the package (`pubmedqa_test_ids.json`, the keys of
    upstream's test_ground_truth.json), so a Hub source needs no extra file."""
    from importlib import resources

    data = json.loads((resources.files("distillkit_scd.tasks") / "pubmedqa_test_ids.json").read_text(encoding="utf-8"))
    return [str(i) for i in data["ids"]]


def hub_items(rows) -> dict:
    """Rows of the Hub's `pqa_labeled` configuration (e.g. `qiaojin/PubMedQA`) → ori_pqal.json's layout."""
    return {str(r["pubid"]): {"QUESTION": r["question"], "CONTEXTS": r["context"]["contexts"],
                              "LABELS": r["context"]["labels"], "final_decision": r["final_decision"]} for r in rows}


def _load_hub(source: str, test_ids_file: str | None) -> tuple[dict, list[str]]:
    from datasets import load_dataset

    pqal = hub_items(load_dataset(source, "pqa_labeled", split="train"))
    test_ids = official_test_ids() if test_ids_file is None else list(_read_json(Path(test_ids_file)))
    missing = [k for k in test_ids if k not in pqal]
    if missing:
        raise ValueError(f"task pubmedqa: {source}: {len(missing)} official test PMIDs are not in its pqa_labeled "
                         f"split (e.g. {missing[:3]}); expected PubMedQA PQA-L (1000 rows)")
    return pqal, test_ids


def _row(pmid: str, item: dict, where: str, use_system_role: bool = True) -> dict:
    for key in ("QUESTION", "CONTEXTS", "LABELS", "final_decision"):
        if key not in item:
            raise ValueError(f"task pubmedqa: {where}: PMID {pmid} has no field {key!r}")
    if not isinstance(item["QUESTION"], str) or not item["QUESTION"].strip():
        raise ValueError(f"task pubmedqa: {where}: PMID {pmid}: QUESTION is empty")
    if len(item["CONTEXTS"]) != len(item["LABELS"]) or not item["CONTEXTS"]:
        raise ValueError(f"task pubmedqa: {where}: PMID {pmid}: {len(item['CONTEXTS'])} CONTEXTS but "
                         f"{len(item['LABELS'])} LABELS; expected the same non-zero number")
    answer = item["final_decision"]
    if answer not in LABELS:
        raise ValueError(f"task pubmedqa: {where}: PMID {pmid}: final_decision {answer!r} is not yes/no/maybe")
    user = format_user(item["QUESTION"], item["CONTEXTS"], item["LABELS"])
    return {
        "id": pmid,
        "answer": answer,
        "question": item["QUESTION"],
        "messages": chat_messages(SYSTEM, user, answer, use_system_role),
    }


def build(source: str | None = None, validation_fraction: float = 0.1, seed: int = 42,
          limit_train: int | None = None, limit_validation: int | None = None, limit_test: int | None = None,
          test_ids_file: str | None = None,
          use_system_role: bool = True, split: str = "by_source", **unknown) -> DatasetDict:
    """Load PubMedQA PQA-L from local files or the Hub (`qiaojin/PubMedQA`, configuration pqa_labeled); the
    Hub split's test ids are the shipped official ones unless `test_ids_file` names another list.

    `split` ("rows" or "by_source", as the JMED tasks take it) changes nothing: every PubMedQA row is its
    own abstract, and the test split is always the official one (the paper: "official 500/500").
    """
    if unknown:
        raise ValueError(f"task pubmedqa: unknown option(s) {sorted(unknown)}; allowed: validation_fraction, "
                         "seed, limit_train, limit_validation, limit_test, test_ids_file, use_system_role, split")
    if split not in SPLITS:
        raise ValueError(f"task pubmedqa: option split: expected one of {', '.join(SPLITS)}, got {split!r}")
    kind, path = pick_source(source, "pubmedqa", "pubmedqa", expected="ori_pqal.json and test_ground_truth.json")
    pqal, test_ids = _load_local(path) if kind == "local" else _load_hub(source, test_ids_file)
    where = str(path or source)
    test_set = set(test_ids)
    train = [_row(k, v, where, use_system_role) for k, v in pqal.items() if k not in test_set]
    test = [_row(k, pqal[k], where, use_system_role) for k in test_ids]
    train, val = carve_validation(train, validation_fraction, seed)
    answer = lambda r: r["answer"]  # noqa: E731  (seeded caps keep the yes/no/maybe mix)
    train = limit_rows(train, limit_train, "limit_train", seed, answer)
    val = limit_rows(val, limit_validation, "limit_validation", seed, answer)
    test = limit_rows(test, limit_test, "limit_test", seed, answer)
    info = {"task": "pubmedqa", "source": where, "split": split,
            "definition": "official PQA-L split: test = test_ground_truth.json (500), train = other 500; "
            f"validation {validation_fraction} of train, seed {seed}"}
    return to_dataset_dict(train, val, test, info)
