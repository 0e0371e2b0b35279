"""Checkpoint selection under the two protocols: `paper` (best on test, as the paper) and `clean` (best on
validation); the reported checkpoint follows `evaluation.select_by`, both are recorded, and `report`
prints Table 1 under either, labelled in the title."""

import pytest

from distillkit_scd.evaluation.results import build_results, write_results
from distillkit_scd.evaluation.scoring import score_task
from distillkit_scd.evaluation.stage import choose_checkpoint
from distillkit_scd.reporting.report import build_table, render_markdown

GOLDS = ["A", "B", "C", "D"]


def _candidate(label, test_generations, validation_accuracy):
    metrics, samples = score_task("crade", GOLDS, test_generations)
    for i, (s, text) in enumerate(zip(samples, test_generations)):
        s.update({"id": f"crade-{i}", "gold": GOLDS[i], "generation": text})
    return {"checkpoint": label, "path": f"/ckpt/{label}", "test": metrics, "samples": samples,
            "validation": {"accuracy": validation_accuracy, "kappa": 0.0, "unparsed": 0}}


@pytest.fixture()
def scored():
    """Validation prefers checkpoint 1 (0.9), test prefers checkpoint 3 (4/4 right)."""
    return [_candidate("step-2", ["A", "A", "A", "A"], 0.9),   # test 1/4
            _candidate("step-4", ["A", "B", "A", "A"], 0.5),   # test 2/4
            _candidate("step-6", ["A", "B", "C", "D"], 0.9)]   # test 4/4; validation ties with step-2


def test_select_by_test_changes_the_reported_checkpoint(scored):
    """select_by test reports the best test score (index 2); validation the best validation score, the
    tie 0.9/0.9 going to the earlier checkpoint (index 0). Both choices are recorded either way."""
    paper = choose_checkpoint(scored, "crade", "test")
    clean = choose_checkpoint(scored, "crade", "validation")
    assert paper["protocol"] == "paper" and clean["protocol"] == "clean"
    for sel in (paper, clean):
        assert sel["protocols"]["paper"]["index"] == 2 and sel["protocols"]["clean"]["index"] == 0
        assert sel["protocols"]["paper"]["metrics"]["accuracy"] == 1.0
        assert "samples" not in sel["candidates"][0]
    assert "test split" in paper["by"] and "validation split" in clean["by"]


def test_manifest_p_best_overrides_the_recipes_protocol_only(scored):
    """SFT rows report the manifest's p(best) under the recipe's protocol; the other is recomputed."""
    sel = choose_checkpoint(scored, "crade", "test", manifest_best=(1, "manifest p(best): x"))
    assert sel["protocols"]["paper"]["index"] == 1 and sel["protocols"]["clean"]["index"] == 0
    assert sel["by"] == "manifest p(best): x"


def test_without_validation_clean_is_unrecorded_and_one_model_is_both(scored):
    no_val = [{k: v for k, v in e.items() if k != "validation"} for e in scored]
    sel = choose_checkpoint(no_val, "crade", "test")
    assert sel["protocols"]["clean"] is None and sel["protocols"]["paper"]["index"] == 2
    sel = choose_checkpoint(no_val, "crade", "validation")  # nothing to select on: the final checkpoint
    assert sel["protocols"]["clean"]["index"] == 2 and "no validation split" in sel["by"]
    one = choose_checkpoint(no_val[:1], "crade", "test")
    assert one["protocols"]["paper"]["index"] == one["protocols"]["clean"]["index"] == 0


def test_report_prints_either_protocol_labelled(scored, tmp_path):
    """`report --protocol` recomputes every cell from that protocol's samples and names it in the title."""
    sel = choose_checkpoint(scored, "crade", "validation")
    chosen = scored[0]
    result = build_results("crade", "td", {"definition": "t", "sizes": {}}, {"path": chosen["path"]},
                           chosen["test"], chosen["samples"], {"max_new_tokens": 8}, sel)
    run = tmp_path / "run"
    write_results(run / "results" / "td" / "crade.json", result)
    files = [run / "results" / "td" / "crade.json"]
    own, paper = build_table(files), build_table(files, "paper")
    assert own.cells["td"]["CRADE"] == 0.25 and paper.cells["td"]["CRADE"] == 1.0
    assert "clean protocol" in render_markdown(own).splitlines()[0]
    assert "paper protocol" in render_markdown(paper).splitlines()[0]
    with pytest.raises(ValueError, match="--protocol"):
        build_table(files, "best")
    sel_no_val = choose_checkpoint([{k: v for k, v in e.items() if k != "validation"} for e in scored], "crade",
                                   "test")
    write_results(files[0], build_results("crade", "td", {"definition": "t", "sizes": {}}, {"path": "x"},
                                          scored[2]["test"], scored[2]["samples"], {"max_new_tokens": 8},
                                          sel_no_val))
    with pytest.raises(ValueError, match="no checkpoint for the clean protocol"):
        build_table(files, "clean")


def test_selection_scores_resume_only_with_the_same_settings(tmp_path):
    """A killed SFT stage re-scores only the checkpoints without a score; scores made with other generation
    settings are not reused (here: loading the missing checkpoint fails, proving it was not skipped)."""
    import json

    from distillkit_scd.config import recipe_from_dict
    from distillkit_scd.evaluation.stage import score_checkpoints

    def recipe(**evaluation):
        return recipe_from_dict({"name": "s", "output_dir": str(tmp_path), "task": {"name": "synthetic"},
                                 "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
                                 "evaluation": evaluation})

    paths = [str(tmp_path / "checkpoint-1"), str(tmp_path / "checkpoint-2")]  # no weights: loading would fail
    fake = {p: {"metrics": {"accuracy": 0.5 + i / 10}, "samples": []} for i, p in enumerate(paths)}
    settings = {"task": "synthetic", "options": {}, "split": "validation", "max_new_tokens": 8, "batch_size": 16,
                "date_string": "26 Jul 2024", "max_length": 512}
    (tmp_path / "selection_scores.json").write_text(json.dumps({"settings": settings, "scores": fake}))
    assert score_checkpoints(recipe(), tmp_path, paths, tokenizer=None) == [fake[p]["metrics"] for p in paths]
    with pytest.raises((OSError, ValueError)):  # another budget: the saved scores do not count
        score_checkpoints(recipe(max_new_tokens=4), tmp_path, paths, tokenizer=None)
