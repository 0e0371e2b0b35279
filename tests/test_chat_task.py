"""The `chat` task loader: file formats, folders and Hub-style splits, seeded carving, refused rows."""

import json

import pytest
from datasets import Dataset, DatasetDict

from distillkit_scd.tasks import load_task
from distillkit_scd.tasks.chat import hub_records, read_folder


def conv(i, answer=None):
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": answer or f"a{i}"}]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_formats_give_the_same_rows(tmp_path):
    """JSONL (messages), JSON list, CSV and Parquet (prompt/completion) load to the same chat rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [conv(i) for i in range(10)]
    pc = [{"system": "Be brief.", "prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("system,prompt,completion\n" + "".join(f"Be brief.,q{i},a{i}\n" for i in range(10)))
    pq.write_table(pa.Table.from_pylist(pc), tmp_path / "d.parquet")
    loaded = [load_task("chat", str(tmp_path / f"d.{ext}"), test_fraction=0.2, validation_fraction=0.25)
              for ext in ("jsonl", "json", "csv", "parquet")]
    want = loaded[0]
    assert [len(want[s]) for s in ("train", "validation", "test")] == [6, 2, 2]
    assert want["test"][0]["messages"][-1]["role"] == "assistant"
    for dd in loaded[1:]:
        for split in ("train", "validation", "test"):
            assert dd[split]["messages"] == want[split]["messages"], split
            assert dd[split]["answer"] == want[split]["answer"]


def test_carve_is_seeded_grouped_and_stratified(tmp_path):
    """Same seed → same split; group_by keeps each group on one side; stratify_by carves every stratum."""
    rows = [{**conv(i), "id": f"r{i}", "doc": f"d{i // 4}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    a, b = load_task("chat", str(path)), load_task("chat", str(path))
    assert a.split_info["ids"] == b.split_info["ids"]
    assert a.split_info["ids"] != load_task("chat", str(path), seed=1).split_info["ids"]
    assert sorted(a.split_info["ids"]["test"] + a.split_info["ids"]["train"] + a.split_info["ids"]["validation"]) == \
        sorted(f"r{i}" for i in range(40))
    grouped = load_task("chat", str(path), group_by="doc")
    sides = {s: set(grouped[s]["group"]) for s in grouped}
    assert not sides["train"] & sides["test"] and not sides["validation"] & sides["test"]
    strat = load_task("chat", str(path), stratify_by="label", test_fraction=0.5, validation_fraction=0)
    assert sorted(strat["test"]["tag"]) == ["neg"] * 10 + ["pos"] * 10
    capped = load_task("chat", str(path), stratify_by="label", test_fraction=0.5, validation_fraction=0, limit_test=4)
    assert sorted(capped["test"]["tag"]) == ["neg", "neg", "pos", "pos"]  # a cap keeps the strata's mix
    with pytest.raises(ValueError, match="at most one"):
        load_task("chat", str(path), group_by="doc", stratify_by="label")
    with pytest.raises(ValueError, match=r"d.jsonl: line 1: column 'topic' \(options.group_by\)"):
        load_task("chat", str(path), group_by="topic")


def test_own_splits_from_folder_and_hub_layout(tmp_path):
    """train/validation/test files are used as given; a Hub download's data/<split>-0000x.parquet too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "plain"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [conv(i) for i in range(6)])
    write_jsonl(folder / "dev.jsonl", [conv(i) for i in range(6, 8)])
    write_jsonl(folder / "test.jsonl", [conv(i) for i in range(8, 11)])
    dd = load_task("chat", str(folder))
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [6, 2, 3]
    assert dd["test"]["id"] == ["test-1", "test-2", "test-3"]
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for split, n in (("train", 8), ("test", 2)):
        pq.write_table(pa.Table.from_pylist([conv(i) for i in range(n)]), hub / f"{split}-00000-of-00001.parquet")
    dd = load_task("chat", str(tmp_path / "hub"), validation_fraction=0.25)
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [6, 2, 2]
    assert "test: the dataset's own" in dd.split_info["definition"]
    (folder / "extra.jsonl").write_text(json.dumps(conv(99)) + "\n")
    with pytest.raises(ValueError, match="belong to no split"):
        read_folder(folder, {})


def test_hub_records_from_a_datasets_object():
    """The Hub path's reader on a local DatasetDict: split aliases, `splits` renames, missing train."""
    dd = DatasetDict({"train": Dataset.from_list([conv(i) for i in range(4)]),
                      "valid": Dataset.from_list([conv(9)]), "eval": Dataset.from_list([conv(7)])})
    found = hub_records(dd, "org/data", {})
    assert {k: len(v) for k, v in found.items()} == {"train": 4, "validation": 1}
    assert found["validation"][0][0] == "org/data split valid: row 1"
    assert len(hub_records(dd, "org/data", {"test": "eval"})["test"]) == 1
    with pytest.raises(ValueError, match="splits.test = 'heldout' is not a split"):
        hub_records(dd, "org/data", {"test": "heldout"})
    with pytest.raises(ValueError, match="no train split"):
        hub_records(DatasetDict({"test": dd["eval"]}), "org/data", {})


@pytest.mark.parametrize("bad,match", [
    ({"messages": [{"role": "user", "content": "q"}]}, "the last turn must be the assistant's answer, got user"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, r"the assistant.s answer \(last turn\) is empty"),
    ({"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]},
     r"messages\[0\]: unknown role 'human'"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, "no user turn"),
    ({"question": "q", "answer": "a"}, "expected a 'messages' column or 'prompt' and 'completion'"),
])
def test_bad_rows_name_file_and_row(tmp_path, bad, match):
    """A bad record is refused with the file, its line (JSONL) and what is wrong."""
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(conv(0)) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=f"data.jsonl: line 3: {match}"):
        load_task("chat", str(path))


def test_bad_sources_and_options(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**conv(i), "id": "same"} for i in range(3)])
    with pytest.raises(ValueError, match="id 'same' appears more than once"):
        load_task("chat", str(path))
    (tmp_path / "broken.jsonl").write_text(json.dumps(conv(0)) + "\n{oops\n")
    with pytest.raises(ValueError, match="broken.jsonl: line 2: not valid JSON"):
        load_task("chat", str(tmp_path / "broken.jsonl"))
    with pytest.raises(ValueError, match="does not exist"):
        load_task("chat", "missing/own.jsonl")
    with pytest.raises(ValueError, match="task.source is required"):
        load_task("chat")
    with pytest.raises(ValueError, match="unknown option"):
        load_task("chat", str(path), shuffle=True)
    with pytest.raises(ValueError, match="task.options.metric"):
        load_task("chat", str(path), metric="bleu")
    with pytest.raises(ValueError, match=r"option test_fraction: expected a number in \(0, 1\), got 0"):
        load_task("chat", str(path), test_fraction=0)
    with pytest.raises(ValueError, match=r"option validation_fraction: expected a number in \[0, 1\), got 1.0"):
        load_task("chat", str(path), validation_fraction=1.0)
