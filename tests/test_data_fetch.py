"""`data fetch` offline: a local copy of the upstream files served by file:// URLs stands in for GitHub."""

import json
import shutil

import pytest

from distillkit_scd.data import fetch as data_fetch
from distillkit_scd.data.fetch import SOURCES, fetch
from distillkit_scd.tasks import load_task


def mirror(root, shared_data, damage: str | None = None) -> dict[str, str]:
    """Upstream paths under root/<source>/ (symlinks to the shared copies; `damage` one file by a byte)."""
    urls = {}
    for name, src in SOURCES.items():
        for upstream, (ours, _) in src.files.items():
            target = root / name / upstream
            target.parent.mkdir(parents=True, exist_ok=True)
            if ours == damage:
                data = bytearray((shared_data / src.folder / ours).read_bytes())
                data[len(data) // 2] ^= 1
                target.write_bytes(bytes(data))
            else:
                target.symlink_to(shared_data / src.folder / ours)
        urls[name] = (root / name).as_uri()
    return urls


def test_fetch_writes_the_layout_the_loaders_read(tmp_path, shared_data):
    """Every file lands where the tasks look, checksums verified; PubMedQA and a JMED task load from it with
    the same rows as from the reference copy; a second fetch downloads nothing."""
    urls = mirror(tmp_path / "mirror", shared_data)
    out = tmp_path / "data"
    folders = fetch("all", out, base_urls=urls)
    assert [f.name for f in folders] == ["pubmedqa", "jmed_llm"]
    record = json.loads((out / "jmed_llm" / "SOURCE.json").read_text())
    assert record["files"]["all/CRADE.csv"]["url"].startswith(
        "https://raw.githubusercontent.com/sociocom/JMED-LLM/3774a34e4a26a7b8a7851f421ecad91a04c2f59b/datasets/all/")
    for task, options in (("pubmedqa", {}), ("crade", {"pool": "benchmark"})):
        got, want = load_task(task, str(out), **options), load_task(task, str(shared_data), **options)
        assert got.split_info["ids"] == want.split_info["ids"]
        assert got["test"]["messages"] == want["test"]["messages"]
    shutil.rmtree(tmp_path / "mirror")  # nothing left to download from: present files are kept as they are
    assert fetch(["pubmedqa", "jmed"], out, base_urls=urls) == folders


def test_damaged_download_fails_loudly_and_writes_nothing(tmp_path, shared_data):
    """One flipped byte: ValueError naming the URL and both checksums; the file is not written."""
    urls = mirror(tmp_path / "mirror", shared_data, damage="test_ground_truth.json")
    with pytest.raises(ValueError, match=r"test_ground_truth.json: sha256 [0-9a-f]{64} differs from the expected "
                                         "939fe566"):
        fetch("pubmedqa", tmp_path / "data", base_urls=urls)
    assert not (tmp_path / "data" / "pubmedqa" / "test_ground_truth.json").exists()
    with pytest.raises(ValueError, match="download failed"):
        fetch("pubmedqa", tmp_path / "data2", base_urls={"pubmedqa": (tmp_path / "empty").as_uri()})
    with pytest.raises(ValueError, match="expected one or more of pubmedqa, jmed, all"):
        fetch("medqa", tmp_path / "data")


def test_sources_are_pinned_and_checksummed():
    """Every file has a pinned commit URL and a sha256 (64 hex digits); nothing points at a branch."""
    for src in data_fetch.SOURCES.values():
        assert len(src.commit) == 40 and src.commit in src.base_url
        assert all(len(sha) == 64 and int(sha, 16) >= 0 for _, sha in src.files.values())


def test_shipped_pubmedqa_test_ids_are_the_official_ones(shared_data):
    """The package's id list equals the keys of upstream's test_ground_truth.json (500, same order), so a
    Hub source reproduces the official split without an extra file."""
    from distillkit_scd.tasks.pubmedqa import official_test_ids

    ids = official_test_ids()
    assert ids == list(json.loads((shared_data / "pubmedqa" / "test_ground_truth.json").read_text()))
    assert len(set(ids)) == 500


def test_pubmedqa_hub_rows_map_to_the_local_layout(shared_data):
    """The Hub (`qiaojin/PubMedQA`, pqa_labeled) row shape maps onto ori_pqal.json's fields (offline: rows
    built from the local file in the Hub's shape)."""
    from distillkit_scd.tasks.pubmedqa import hub_items

    pqal = json.loads((shared_data / "pubmedqa" / "ori_pqal.json").read_text())
    rows = [{"pubid": int(k), "question": v["QUESTION"], "final_decision": v["final_decision"],
             "context": {"contexts": v["CONTEXTS"], "labels": v["LABELS"]}} for k, v in list(pqal.items())[:5]]
    items = hub_items(rows)
    for k, v in list(pqal.items())[:5]:
        assert items[k] == {key: v[key] for key in ("QUESTION", "CONTEXTS", "LABELS", "final_decision")}


def test_cli_data_fetch(tmp_path, shared_data, monkeypatch, capsys):
    """`distillkit-scd data fetch pubmedqa --to DIR` (served from the local mirror) prints where the data
    went and how to use it; a damaged file exits 2 with one line."""
    import functools

    from distillkit_scd import cli

    urls = mirror(tmp_path / "mirror", shared_data, damage="crade.csv")
    monkeypatch.setattr(data_fetch, "fetch", functools.partial(fetch, base_urls=urls))
    assert cli.main(["data", "fetch", "pubmedqa", "--to", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'data' / 'pubmedqa'}: checksums verified" in out and "task.source:" in out
    assert cli.main(["data", "fetch", "jmed", "--to", str(tmp_path / "data")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the log lines of the files that were fine
    assert last.startswith("error: data fetch: ") and "crade.csv: sha256" in last
