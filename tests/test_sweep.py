"""`sweep`: the TD row per grid value, the best one chosen on the selection split, the recipe's other rows
at that value, a grid record; resumable (a second run runs nothing)."""

import json

import pytest

from distillkit_scd.pipeline.sweep import parse_grid, point_name


def test_parse_grid_and_point_names():
    assert parse_grid(["optim.learning_rate=5e-6,1e-5", "distill.alpha=0.3"]) == [
        ("optim.learning_rate", ["5e-6", "1e-5"]), ("distill.alpha", ["0.3"])]
    for bad in (["optim.learning_rate"], ["x=1,,2"], ["x=1,1"], ["x=1", "x=2"], []):
        with pytest.raises(ValueError, match="--grid"):
            parse_grid(bad)
    a, b = point_name({"optim.learning_rate": "1e-5"}), point_name({"optim.learning_rate": "1.0e-5"})
    assert a != b and a.startswith("learning_rate=1e-5-") and "/" not in point_name({"x": "a/b"})


@pytest.mark.slow
def test_sweep_on_the_micro_quickstart(tmp_path):
    """Two distillation learning rates: each runs TD in its own folder (the SFT stages, which the field does
    not reach, once: shared), the chosen one has the best TD score on validation (ties: the first) and then
    also the CD row; grid.json/grid.md record it all; a second sweep skips every stage."""
    from distillkit_scd.evaluation.selection import best_index
    from distillkit_scd.pipeline.run import read_stamp
    from distillkit_scd.pipeline.sweep import run_sweep
    from tests.test_end_to_end import write_recipe

    recipe = write_recipe(tmp_path, methods="[td, cd]", T=2, zero_shot="false")
    record = run_sweep(recipe, ["distill.learning_rate=1e-3,3e-3"], in_process=True)
    scores = [p["td_score"] for p in record["points"]]
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    assert record["chosen"] == record["points"][best_index(scores)] and record["selected_on"] == "validation"
    root = tmp_path / "run" / "sweep"
    assert json.loads((root / "grid.json").read_text())["chosen"]["point"] == record["chosen"]["point"]
    assert "←" in (root / "grid.md").read_text()
    chosen = record["chosen"]["folder"]
    assert (root / "chosen").read_text().strip() == chosen
    for p in record["points"]:
        rows = sorted(f.parent.name for f in (tmp_path / p["folder"]).glob("results/*/synthetic.json"))
        assert rows == (["cd", "student_sft", "td", "teacher_sft"] if p["folder"] == chosen
                        else ["student_sft", "td", "teacher_sft"])
    second = tmp_path / record["points"][1]["folder"]  # the SFT stages ran once, for the first point
    assert read_stamp(second, "sft-teacher")["shared_from"] == record["points"][0]["folder"]
    assert "shared_from" not in read_stamp(second, "distill-td")
    stamp = read_stamp(tmp_path / chosen, "distill-td")
    run_sweep(recipe, ["distill.learning_rate=1e-3,3e-3"], in_process=True)  # resumes: nothing re-runs
    assert read_stamp(tmp_path / chosen, "distill-td")["finished"] == stamp["finished"]
    summary = json.loads((tmp_path / chosen / "stages" / "summary.json").read_text())
    assert {s["status"] for s in summary["stages"] if s["stage"] != "report"} == {"skipped"}
