"""Fig. 5 as the paper draws it: per-sample teacher − student differences per row with the summed TFS
deficit and SFS advantage (hand-computed), and the report writes it for every student row."""

import json

import pytest

from distillkit_scd.reporting.figures import fig5_summary, plot_fig5, tfs_sfs


def _results(task, scores):
    return {"task": task, "samples": [{"id": i, "scores": {"exact_f1": s, "partial_f1": s}}
                                      for i, s in enumerate(scores)]}


def test_tfs_sfs_by_hand():
    """Teacher [1, .5, 0, .8, 1] vs student [0, .5, 1, .3, .75]: differences 1, 0, −1, .5, .25 → TFS
    deficit 1.75 over 3 samples, SFS advantage 1.0 over 1, one tie."""
    teacher = _results("nrner", [1, 0.5, 0, 0.8, 1])
    student = _results("nrner", [0, 0.5, 1, 0.3, 0.75])
    got = fig5_summary(teacher, {"TD": student})
    assert got["metric"] == "exact_f1"
    assert got["rows"]["TD"] == pytest.approx({"tfs_deficit": 1.75, "sfs_advantage": 1.0, "tfs": 3, "sfs": 1,
                                               "ties": 1, "samples": 5})
    assert tfs_sfs([]) == {"tfs_deficit": 0, "sfs_advantage": 0, "tfs": 0, "sfs": 0, "ties": 0, "samples": 0}


def test_fig5_one_panel_per_row(tmp_path):
    teacher = _results("nrner", [1, 0.5, 0, 0.8, 1])
    rows = {name: _results("nrner", [0.5, 0.5, 1, s, 0]) for name, s in (("Student SFT", 0.2), ("TD", 0.9),
                                                                         ("SCD w/ AW", 0.8))}
    path = plot_fig5(teacher, rows, tmp_path / "fig5.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="Fig. 5"):
        plot_fig5(teacher, {}, tmp_path / "none.png")


def test_report_writes_fig5_for_every_row(tmp_path):
    """write_report: fig5_<task>.png and .json with one entry per student row present."""
    from distillkit_scd.evaluation.results import write_results
    from distillkit_scd.reporting.report import write_report
    from tests.test_report import make_result

    run = tmp_path / "run"
    for k, row in enumerate(("teacher_sft", "student_sft", "td", "scd_aw")):
        write_results(run / "results" / row / "crade.json", make_result("crade", row, k))
    written = write_report(run)
    summary = json.loads((run / "report" / "fig5_crade.json").read_text())
    assert set(summary["rows"]) == {"Student SFT", "TD", "SCD w/ AW"} and "fig5_crade" in written
