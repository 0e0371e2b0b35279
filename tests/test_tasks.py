"""Task loading: official splits, leakage-free JMED splits, byte-exact JMED prompts, synthetic task."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset

from distillkit_scd.tasks import TASKS, load_task, split_definition
from distillkit_scd.tasks.common import default_data_root, group_split
from distillkit_scd.tasks.jmed import source_text

JMED = ("jmmlu", "crade", "rrtnm", "smdis", "nrner")
# (train, validation, test) with the defaults: seed 42, 80/20 by source text, validation 10% of train.
JMED_SIZES = {
    "all": {"jmmlu": (489, 55, 137), "crade": (1174, 130, 326), "rrtnm": (234, 27, 63),
            "smdis": (11064, 1224, 3072), "nrner": (1107, 124, 308)},
    "benchmark": dict.fromkeys(JMED, (72, 8, 20)),
}
# Distinct source texts in the full pools (data README §2.4).
JMED_GROUPS = {"crade": 147, "rrtnm": 108, "smdis": 1920, "nrner": 934}

MC_SYSTEM = ("与えられた医学に関する質問と選択肢から、最も適切な回答を選択してください。なお、回答には"
             "選択肢のアルファベット（例：A）のみを含め、他には何も含めないことを厳守してください。")
NER_SYSTEM = ("与えられた医学に関する質問から、最も適切な回答をしてください。なお、回答にはPythonのリスト形式"
              "（例：['回答1', '回答2']）のみを含め、他には何も含めないことを厳守してください。")


def _ids(split) -> list[str]:
    return list(split["id"])


# ---------------------------------------------------------------- PubMedQA


def test_pubmedqa_official_split(shared_data):
    """test = keys of test_ground_truth.json (500); train + validation = the other 500; labels 276/169/55."""
    dd = load_task("pubmedqa", str(shared_data))
    gt = json.loads((shared_data / "pubmedqa" / "test_ground_truth.json").read_text())
    pqal = json.loads((shared_data / "pubmedqa" / "ori_pqal.json").read_text())
    assert _ids(dd["test"]) == list(gt)
    pool = _ids(dd["train"]) + _ids(dd["validation"])
    assert len(pool) == 500 and set(pool) == set(pqal) - set(gt)
    expected = {"yes": 276, "no": 169, "maybe": 55}
    assert Counter(list(dd["test"]["answer"])) == expected
    assert Counter(list(dd["train"]["answer"]) + list(dd["validation"]["answer"])) == expected
    assert [gt[i] for i in dd["test"]["id"]] == list(dd["test"]["answer"])
    row = dd["test"][0]
    assert row["messages"][-1] == {"role": "assistant", "content": gt[row["id"]]}
    assert pqal[row["id"]]["QUESTION"] in row["messages"][1]["content"]


def test_pubmedqa_default_source_from_env(shared_data, monkeypatch):
    """source=None reads $DISTILLKIT_SCD_DATA (unset: `data/`, where `data fetch --to data/` writes); a
    missing folder is an error naming the expected files."""
    monkeypatch.delenv("DISTILLKIT_SCD_DATA", raising=False)
    assert default_data_root() == Path("data")
    monkeypatch.setenv("DISTILLKIT_SCD_DATA", str(shared_data))
    assert len(load_task("pubmedqa")["test"]) == 500
    with pytest.raises(ValueError, match="ori_pqal.json and test_ground_truth.json"):
        load_task("pubmedqa", str(shared_data / "jmed_llm"))
    monkeypatch.setenv("DISTILLKIT_SCD_DATA", str(shared_data / "missing"))
    with pytest.raises(ValueError, match="expected crade.csv and all/CRADE.csv"):
        load_task("crade")


# ---------------------------------------------------------------- JMED splits


@pytest.mark.parametrize("pool", ["all", "benchmark"])
@pytest.mark.parametrize("task", JMED)
def test_jmed_split_sizes_and_no_shared_source_text(shared_data, task, pool):
    """Sizes are as documented and no source text (report/tweet/record/question) is in two splits."""
    dd = load_task(task, str(shared_data), pool=pool)
    assert tuple(len(dd[s]) for s in ("train", "validation", "test")) == JMED_SIZES[pool][task]
    texts = {s: {source_text(task, q) for q in dd[s]["question"]} for s in dd}
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]
    ids = [i for s in dd for i in _ids(dd[s])]
    assert len(ids) == len(set(ids))
    if pool == "all" and task in JMED_GROUPS:
        assert sum(len(t) for t in texts.values()) == JMED_GROUPS[task]


PAPER_TEST_SIZES = {"jmmlu": 137, "crade": 326, "rrtnm": 65, "smdis": 3072, "nrner": 308}
"""The paper's Table 1 denominators: every printed JMED score is k/n for these n (⌈0.2·n⌉ of the pools)."""


@pytest.mark.parametrize("task", JMED)
def test_row_split_gives_the_papers_test_sizes(shared_data, task):
    """`split: rows` with no validation carve-out: test = ⌈0.2·n⌉ rows (137/326/65/3072/308), train the rest,
    every row in exactly one part, the same ids for the same seed and other ids for another seed."""
    dd = load_task(task, str(shared_data), split="rows", validation_fraction=0.0)
    n = sum(len(dd[s]) for s in dd)
    assert len(dd["test"]) == PAPER_TEST_SIZES[task] == -(-n // 5)
    assert len(dd["validation"]) == 0 and len(dd["train"]) == n - PAPER_TEST_SIZES[task]
    assert len({*_ids(dd["train"]), *_ids(dd["test"])}) == n
    assert _ids(load_task(task, str(shared_data), split="rows", validation_fraction=0.0)["test"]) == _ids(dd["test"])
    other = load_task(task, str(shared_data), split="rows", validation_fraction=0.0, seed=1)
    assert _ids(other["test"]) != _ids(dd["test"])
    assert dd.split_info["split"] == "rows" and "by row" in dd.split_info["definition"]


def test_pubmedqa_rows_split_is_the_official_500_500(shared_data):
    """PubMedQA's split is the official one under either split name (each row is its own abstract)."""
    for split in ("rows", "by_source"):
        dd = load_task("pubmedqa", str(shared_data), split=split, validation_fraction=0.0)
        assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (500, 0, 500)
    with pytest.raises(ValueError, match="option split"):
        load_task("pubmedqa", str(shared_data), split="random")
    with pytest.raises(ValueError, match="option split"):
        load_task("crade", str(shared_data), split="random")


def test_jmed_split_is_reproducible_and_seeded(shared_data):
    """Same data + seed → same id lists (also in split_definition); another seed → another split."""
    a = load_task("rrtnm", str(shared_data))
    b = split_definition("rrtnm", str(shared_data))
    assert b["ids"] == {s: _ids(a[s]) for s in ("train", "validation", "test")}
    assert b["sizes"] == {s: len(a[s]) for s in ("train", "validation", "test")}
    json.dumps(b)  # JSON-able: a run can save it
    c = load_task("rrtnm", str(shared_data), seed=7)
    assert set(_ids(c["test"])) != set(_ids(a["test"]))


def test_group_split_pure_function_of_data():
    """Input order does not change which rows land in test; groups are never cut; test ≤ quota."""
    rows = [{"id": str(i), "g": f"text{i % 37}"} for i in range(300)]
    train, test = group_split(rows, lambda r: r["g"], 0.2, seed=42)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    train2, test2 = group_split(shuffled, lambda r: r["g"], 0.2, seed=42)
    assert {r["id"] for r in test} == {r["id"] for r in test2}
    assert not {r["g"] for r in train} & {r["g"] for r in test}
    assert len(train) + len(test) == 300 and 50 <= len(test) <= 60


@pytest.mark.parametrize("task", ["pubmedqa", "crade", "synthetic"])
def test_validation_carved_from_train(shared_data, task):
    """Validation is disjoint from train and test, ≈10% of the train pool, deterministic; 0 gives none."""
    source = None if task == "synthetic" else str(shared_data)
    a, b = load_task(task, source), load_task(task, source)
    assert not set(_ids(a["validation"])) & set(_ids(a["train"]))
    assert not set(_ids(a["validation"])) & set(_ids(a["test"]))
    pool = len(a["train"]) + len(a["validation"])
    assert abs(len(a["validation"]) - 0.1 * pool) <= 0.02 * pool
    assert all(_ids(a[s]) == _ids(b[s]) for s in a)
    none = load_task(task, source, validation_fraction=0.0)
    assert len(none["validation"]) == 0 and len(none["train"]) == pool
    assert none["validation"].column_names == none["train"].column_names


def test_limits(shared_data):
    """limit_train / limit_validation / limit_test cap the splits (smoke runs) with a subset of each split;
    an uncapped split is untouched; a cap at or above the size keeps everything."""
    dd = load_task("smdis", str(shared_data), limit_train=10, limit_validation=4, limit_test=5)
    full = load_task("smdis", str(shared_data))
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (10, 4, 5)
    for split in ("train", "validation", "test"):
        assert set(_ids(dd[split])) <= set(_ids(full[split]))
    assert _ids(load_task("smdis", str(shared_data), limit_test=5)["validation"]) == _ids(full["validation"])
    assert _ids(load_task("rrtnm", str(shared_data), limit_test=10_000)["test"]) == \
        _ids(load_task("rrtnm", str(shared_data))["test"])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="limit_train"):
            load_task("smdis", str(shared_data), limit_train=bad)


def test_caps_are_seeded_and_keep_the_label_mix(shared_data):
    """PubMedQA's test file lists its 276 "yes" first: a prefix of 100 would be all "yes"; the cap keeps
    the 276/169/55 mix (largest remainder: 55/34/11), is the same for the same seed and differs for another."""
    from collections import Counter

    dd = load_task("pubmedqa", str(shared_data), limit_test=100)
    assert Counter(dd["test"]["answer"]) == {"yes": 55, "no": 34, "maybe": 11}
    assert _ids(load_task("pubmedqa", str(shared_data), limit_test=100)["test"]) == _ids(dd["test"])
    assert _ids(load_task("pubmedqa", str(shared_data), limit_test=100, seed=1)["test"]) != _ids(dd["test"])
    crade = load_task("crade", str(shared_data), limit_train=100)  # natural mix A 81 %, B/C/D rare
    full = Counter(load_task("crade", str(shared_data))["train"]["answer"])
    got = Counter(crade["train"]["answer"])
    for label, count in full.items():
        assert abs(got[label] - 100 * count / sum(full.values())) < 1  # within rounding of proportional


def test_stratified_quota_by_hand():
    """Largest-remainder rounding: quotas are proportional and sum to the cap exactly."""
    from distillkit_scd.tasks.common import stratified_quota

    assert stratified_quota({"yes": 276, "no": 169, "maybe": 55}, 100) == {"yes": 55, "no": 34, "maybe": 11}
    assert stratified_quota({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # tie: sorted label first
    assert stratified_quota({"a": 5}, 3) == {"a": 3}


# ---------------------------------------------------------------- JMED prompts


def _raw(shared_data, file: str, row: int) -> dict:
    with (shared_data / "jmed_llm" / file).open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))[row]


def _row_by_id(dd, rid: str) -> dict:
    for split in dd.values():
        ids = list(split["id"])
        if rid in ids:
            return split[ids.index(rid)]
    raise KeyError(rid)


# (task, benchmark file, data row index, option letters the prompt must list)
PROMPT_CASES = [
    ("jmmlu", "jmmlu_med.csv", 81, "ABCD"),
    ("crade", "crade.csv", 10, "ABCD"),
    ("rrtnm", "rrtnm.csv", 71, "AB"),  # an M row: optionC..E are empty and must not appear
    ("smdis", "smdis.csv", 21, "AB"),
]


@pytest.mark.parametrize(("task", "file", "index", "letters"), PROMPT_CASES)
def test_jmed_choice_prompt_byte_exact(shared_data, task, file, index, letters):
    """System + user messages equal the official JMED-LLM prompt built by hand from the raw CSV cells."""
    raw = _raw(shared_data, file, index)
    row = _row_by_id(load_task(task, str(shared_data), pool="benchmark"), f"{task}-bench-{index}")
    user = "質問: " + raw["question"] + "\n選択肢:\n"
    for letter in letters:
        user += letter + ". " + raw["option" + letter] + "\n"
    assert row["messages"] == [
        {"role": "system", "content": MC_SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": raw["answer"]},
    ]
    assert (row["answer"], row["tag"]) == (raw["answer"], raw["tag"])


def test_rrtnm_m_row_lists_two_options(shared_data):
    """The RRTNM M row ends right after option B (empty columns omitted)."""
    row = _row_by_id(load_task("rrtnm", str(shared_data), pool="benchmark"), "rrtnm-bench-71")
    user = row["messages"][1]["content"]
    assert user.endswith("\nB. 遠隔転移がある\n") and "\nC. " not in user


def test_nrner_prompt_byte_exact(shared_data):
    """NRNER: the NER system prompt and the question verbatim; the assistant turn is the list literal."""
    raw = _raw(shared_data, "nrner.csv", 72)
    row = _row_by_id(load_task("nrner", str(shared_data), pool="benchmark"), "nrner-bench-72")
    assert row["messages"] == [
        {"role": "system", "content": NER_SYSTEM},
        {"role": "user", "content": raw["question"]},
        {"role": "assistant", "content": raw["answer"]},
    ]


def test_no_system_role_merges_prompts(shared_data):
    """use_system_role=False: one user turn "{system}\n\n{user}" (JMED-LLM upstream), same assistant turn."""
    raw = _raw(shared_data, "smdis.csv", 21)
    row = _row_by_id(load_task("smdis", str(shared_data), pool="benchmark", use_system_role=False),
                     "smdis-bench-21")
    user = "質問: " + raw["question"] + "\n選択肢:\nA. " + raw["optionA"] + "\nB. " + raw["optionB"] + "\n"
    assert row["messages"] == [{"role": "user", "content": MC_SYSTEM + "\n\n" + user},
                               {"role": "assistant", "content": raw["answer"]}]


# ---------------------------------------------------------------- bad input


def _write_csv(path, rows, columns=("tag", "question", "optionA", "optionB", "answer")):
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(("bad", "message"), [
    ({"answer": "C"}, "answer 'C'"),
    ({"answer": ""}, "column 'answer'"),
    ({"optionA": ""}, "options present for B"),
])
def test_bad_choice_row_names_file_and_row(tmp_path, bad, message):
    """A malformed row → ValueError naming the file, the data row (1-based) and the problem."""
    good = {"tag": "t", "question": "q\n「x」", "optionA": "a", "optionB": "b", "answer": "A"}
    path = tmp_path / "bad.csv"
    _write_csv(path, [good, {**good, **bad}])
    with pytest.raises(ValueError, match=message) as err:
        load_task("smdis", str(path))
    assert str(path) in str(err.value) and "data row 2" in str(err.value)


def test_bad_ner_answer(tmp_path):
    """NRNER answers must be non-empty list literals of strings."""
    path = tmp_path / "ner.csv"
    _write_csv(path, [{"tag": "d", "question": "q", "answer": "['a']"}, {"tag": "d", "question": "r", "answer": "a"}],
               columns=("tag", "question", "answer"))
    with pytest.raises(ValueError, match="data row 2.*list literal"):
        load_task("nrner", str(path))


def test_missing_files_and_unknown_options(tmp_path, shared_data):
    """Errors name the expected files, the unknown option, or the unknown task."""
    with pytest.raises(ValueError, match="CRADE.csv"):
        load_task("crade", str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        load_task("crade", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown option"):
        load_task("crade", str(shared_data), shuffle=True)
    with pytest.raises(ValueError, match="pool"):
        load_task("crade", str(shared_data), pool="full")
    with pytest.raises(ValueError, match="task.name"):
        load_task("medqa")


def test_registry():
    """Every documented task is registered with a scoring kind."""
    assert set(TASKS) == {"synthetic", "pubmedqa", "chat", *JMED}
    assert {TASKS[t].kind for t in TASKS} == {"exact", "yesno", "choice", "ner", "chosen"}
    assert all(TASKS[t].columns for t in TASKS if TASKS[t].kind != "chosen")


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_with_tags():
    """Same seed → identical rows; all four families present in every split; answers short."""
    a, b = load_task("synthetic"), load_task("synthetic")
    assert all(a[s].to_list() == b[s].to_list() for s in a)
    c = load_task("synthetic", seed=1)
    assert list(a["test"]["messages"]) != list(c["test"]["messages"])
    for split in a.values():
        assert set(split["tag"]) == {"lookup", "choice", "sum", "reverse"}
    assert (len(a["train"]) + len(a["validation"]), len(a["test"])) == (600, 100)
    assert all(0 < len(x) <= 5 for s in a.values() for x in s["answer"])
    for row in a["test"]:
        assert row["messages"][-1] == {"role": "assistant", "content": row["answer"]}


def test_synthetic_rules_hold():
    """Each family's answer follows its rule (checked independently of the generator)."""
    dd = load_task("synthetic", num_train=40, num_test=40)
    codes = {}
    for row in dd["train"].to_list() + dd["test"].to_list():
        q, ans = row["question"], row["answer"]
        if row["tag"] == "sum":
            a, b = (int(x) for x in q.split("(")[1].split(")")[0].split(" + "))
            assert ans == str((a + b) % 10)
        elif row["tag"] == "reverse":
            assert ans.split() == q.split(": ")[1].split()[::-1]
        elif row["tag"] == "lookup":
            assert codes.setdefault(q, ans) == ans  # a fixed table: one code per term
        else:
            assert ans in "ABC" and len(ans) == 1
    with pytest.raises(ValueError, match="num_train"):
        load_task("synthetic", num_train=0)
    with pytest.raises(ValueError, match="source"):
        load_task("synthetic", "some/dataset")


def test_hub_source_uses_load_dataset(shared_data, monkeypatch):
    """A Hub id goes through `datasets.load_dataset` and then the same row checks and split as local files."""
    import datasets

    with (shared_data / "jmed_llm" / "rrtnm.csv").open(encoding="utf-8", newline="") as fh:
        records = list(csv.DictReader(fh))
    for rec in records:  # Hub CSV loaders give None for empty cells
        for key, value in rec.items():
            rec[key] = value or None
    calls = []

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        return Dataset.from_list(records)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_task("rrtnm", "someone/jmed-rrtnm")
    local = load_task("rrtnm", str(shared_data / "jmed_llm" / "rrtnm.csv"))
    assert calls == [("someone/jmed-rrtnm", "train")]
    for split in ("train", "validation", "test"):
        assert list(hub[split]["messages"]) == list(local[split]["messages"])
