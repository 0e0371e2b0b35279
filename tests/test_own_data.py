"""Your own data end to end: the example recipe (`task.name: chat` on a JSONL file) runs all nine rows to a
Table 1 on tiny models, and `validate` / `run --dry-run` refuse missing data with one line naming the path."""

from pathlib import Path

import pytest

from distillkit_scd import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "recipes" / "examples" / "own_data.yaml"
MICRO = ["sft.num_checkpoints=2", "sft.teacher.num_train_epochs=2", "sft.student.num_train_epochs=2",
         "distill.steps_per_stage=3", "distill.scd.probe_size=16", "task.max_length=64", "evaluation.batch_size=32"]


@pytest.mark.slow
def test_example_recipe_runs_all_nine_rows_on_a_jsonl(tmp_path, capsys):
    """`data example` writes the JSONL; the example recipe (micro sizes) gives every row a results file
    that records the metric, and a Table 1 whose cells are the means of the per-sample exact matches."""
    from distillkit_scd.pipeline.run import run_pipeline
    from distillkit_scd.reporting.report import build_table

    data = tmp_path / "own.jsonl"
    assert cli.main(["data", "example", str(data), "--rows", "120", "--seed", "3"]) == 0
    overrides = [f"task.source={data}", f"output_dir={tmp_path / 'run'}", *MICRO]
    results = run_pipeline(EXAMPLE, overrides, in_process=True)
    assert all(r.status == "done" for r in results), [vars(r) for r in results]
    table = build_table(tmp_path / "run")
    assert table.columns == ["chat exact_match"] and len(table.cells) == 9
    for key, res in table.results.items():
        assert res["scoring"] == {"metric": "exact_match", "options": {}, "columns": [["chat exact_match", "exact_match"]],
                                  "lower_is_better": False}
        scores = [s["scores"]["exact_match"] for s in res["samples"]]
        assert table.cells[key.split("/")[0]]["chat exact_match"] == pytest.approx(sum(scores) / len(scores))
    md = (tmp_path / "run" / "report" / "table1.md").read_text()
    assert "SCD w/ AW" in md and "chat: metric exact_match {}" in md


def test_missing_data_is_one_line_naming_the_path(tmp_path, capsys):
    """validate and run --dry-run exit 2 without a traceback, naming the missing file (chat) or folder
    (a paper task) and the command that fetches the paper's data."""
    missing = tmp_path / "nowhere" / "own.jsonl"
    for argv in (["validate", str(EXAMPLE)], ["run", str(EXAMPLE), "--dry-run"]):
        assert cli.main([*argv, "--set", f"task.source={missing}", "--set", f"output_dir={tmp_path / 'run'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and str(missing) in err and "Traceback" not in err
    pubmedqa = ["--set", "task.name=pubmedqa", "--set", "task.options={}", "--set", f"task.source={tmp_path / 'pq'}"]
    assert cli.main(["validate", str(EXAMPLE), *pubmedqa]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "pq") in err and "distillkit-scd data fetch pubmedqa --to DIR" in err
    assert not (tmp_path / "run").exists()


def test_validate_reads_the_data_and_notes_hub_ids(tmp_path, capsys):
    """A readable file: sizes in the note; a bad row: file and line named; a Hub id: 'not checked offline'."""
    data = tmp_path / "own.jsonl"
    assert cli.main(["data", "example", str(data), "--rows", "40"]) == 0
    assert cli.main(["validate", str(EXAMPLE), "--set", f"task.source={data}"]) == 0
    assert "(train 28, validation 4, test 8)" in capsys.readouterr().err  # 10 rows per tag: 2 test, 1 of 8 validation
    data.write_text(data.read_text() + '{"messages": [{"role": "user", "content": "q"}]}\n')
    assert cli.main(["validate", str(EXAMPLE), "--set", f"task.source={data}"]) == 2
    assert f"{data}: line 41: the last turn must be the assistant's answer" in capsys.readouterr().err
    assert cli.main(["validate", str(EXAMPLE), "--set", "task.source=someone/their-dataset"]) == 0
    assert "Hub dataset id: not checked offline" in capsys.readouterr().err
