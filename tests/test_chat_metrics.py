"""The `chat` task's chosen metrics, each against hand-computed cases, and the custom-metric import."""

import pytest

from distillkit_scd.evaluation.chat_metrics import (
    build_chat_scoring,
    normalise,
    parse_label,
    parse_list,
    set_f1,
)
from distillkit_scd.evaluation.metrics import cohen_kappa, parse_choice
from distillkit_scd.evaluation.scoring import score_task


def score(metric, golds, gens):
    return score_task("chat", golds, gens, {"metric": metric})


def test_exact_match_normalises_case_width_space_and_final_period():
    """NFKC + casefold + collapsed whitespace + one trailing period: 3 of 4 match by hand."""
    assert normalise("  The  ANSWER.\n") == "the answer"
    assert normalise("ＡＢＣ") == "abc"  # full-width → ASCII (NFKC)
    metrics, samples = score("exact_match", ["Paris", "4", "New York", "yes"],
                             ["paris.", " 4 ", "new  york", "no"])
    assert [s["scores"]["exact_match"] for s in samples] == [1.0, 1.0, 1.0, 0.0]
    assert metrics["exact_match"] == 0.75 and metrics["unparsed"] == 0


def test_choice_letters_follow_the_jmed_parser():
    """One-character labels: the first label character in the text, exactly `parse_choice` for A–F."""
    for text in ("C", "Answer: C", "答えはＢです B", "xyz", "the answer is f or F"):
        assert parse_label(text, tuple("ABCDEF")) == parse_choice(text)
    metrics, samples = score({"name": "choice", "labels": ["A", "B", "C"]}, ["A", "B", "C", "C"],
                             ["A", "I pick B", "none", "Answer: C"])  # "Answer" starts with A
    assert [s["prediction"] for s in samples] == ["A", "B", "None", "A"]
    assert metrics["accuracy"] == 0.5 and metrics["unparsed"] == 1
    golds, preds = ["A", "B", "C", "C"], ["A", "B", "None", "A"]
    assert metrics["kappa"] == pytest.approx(cohen_kappa(golds, preds))
    # by hand: labels A, B, C, None; gold counts 1, 1, 2, 0; predicted 2, 1, 0, 1; agreement 2 of 4
    po, pe = 2 / 4, (1 * 2 + 1 * 1 + 2 * 0 + 0 * 1) / 16
    assert metrics["kappa"] == pytest.approx((po - pe) / (1 - pe))


def test_choice_word_labels_and_bad_gold():
    """Longer labels match as whole words, case-insensitively, and come back in their own spelling."""
    assert parse_label("Probably NOT, but maybe", ("yes", "no", "maybe")) == "maybe"  # "NOT" is not the word "no"
    assert parse_label("No, never", ("yes", "no", "maybe")) == "no"
    assert parse_label("Nothing", ("yes", "no", "maybe")) is None
    metrics, _ = score({"name": "choice", "labels": ["yes", "no"]}, ["yes", "no"], ["YES!", "nope"])
    assert metrics["accuracy"] == 0.5
    with pytest.raises(ValueError, match="item 1: gold 'perhaps' is not one of the labels"):
        score({"name": "choice", "labels": ["yes", "no"]}, ["yes", "perhaps"], ["yes", "no"])


def test_regex_extracts_then_matches():
    """Group 1 of the first match (or the whole match), normalised, compared with the normalised gold."""
    metric = {"name": "regex", "pattern": r"answer is (\w+)"}
    metrics, samples = score(metric, ["42", "Blue", "7"], ["I think the answer is 42.", "answer is blue", "7"])
    assert [s["prediction"] for s in samples] == ["42", "blue", None]
    assert [s["scores"]["exact_match"] for s in samples] == [1.0, 1.0, 0.0]
    assert metrics["unparsed"] == 1
    both = {"name": "regex", "pattern": r"#### (\d+)", "apply_to_gold": True}
    assert score(both, ["so 3 + 4 = 7\n#### 7"], ["#### 7"])[0]["exact_match"] == 1.0


def test_f1_list_set_f1_by_hand():
    """Set F1 over list answers: literal lists or separated strings, items normalised."""
    assert parse_list("['Fever', 'cough ']") == (["fever", "cough"], True)
    assert parse_list("fever; cough", ";") == (["fever", "cough"], True)
    assert parse_list("['a',") == ([], False)
    assert set_f1(["a", "b", "c"], ["a", "x"]) == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert set_f1([], []) == 1.0 and set_f1(["a"], []) == 0.0
    metrics, samples = score("f1_list", ["a, b, c", "x"], ["['A', 'x']", "[broken"])
    assert [s["scores"]["f1"] for s in samples] == [pytest.approx(0.4), 0.0]
    assert metrics["f1"] == pytest.approx(0.2) and metrics["unparsed"] == 1


def test_none_is_loss_only_lower_is_better():
    """Metric none scores no generation: its column is the loss and selection takes the lowest."""
    scoring = build_chat_scoring("chat", "none")
    assert not scoring.needs_generation and scoring.lower_is_better and scoring.primary == ("loss",)
    assert scoring.selection_score({"loss": 2.0}) < scoring.selection_score({"loss": 1.0})
    with pytest.raises(ValueError, match="scores losses"):
        scoring.score(["a"], ["a"])


def test_custom_metric_by_import_path(tmp_path, monkeypatch):
    """`package.module:function` is imported (never evaluated); options reach it as keywords."""
    (tmp_path / "my_metrics.py").write_text(
        "def length_ratio(gold, generation, cap=1.0):\n    return min(len(generation) / len(gold), cap)\n"
        "NOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    metrics, samples = score({"name": "custom", "function": "my_metrics:length_ratio", "cap": 2.0},
                             ["abcd", "ab"], ["ab", "abcdef"])
    assert [s["scores"]["score"] for s in samples] == [0.5, 2.0]  # 2/4, min(6/2, 2)
    assert metrics["score"] == 1.25
    shorthand = build_chat_scoring("chat", "my_metrics:length_ratio")
    assert shorthand.metric == "custom" and shorthand.columns == (("chat length_ratio", "score"),)
    assert build_chat_scoring("chat", {"name": "custom", "function": "my_metrics:length_ratio"}).describe() == {
        "metric": "custom", "options": {"function": "my_metrics:length_ratio"},
        "columns": [["chat length_ratio", "score"]], "lower_is_better": False}
    for bad, match in [("my_metrics:NOT_CALLABLE", "no function"), ("no_such_module_xyz:f", "cannot import"),
                       ("my_metrics:__import__('os')", "expected 'package.module:function'")]:
        with pytest.raises(ValueError, match=match):
            build_chat_scoring("chat", {"name": "custom", "function": bad})
    (tmp_path / "bad_metric.py").write_text("def nan(gold, generation):\n    return float('nan')\n")
    with pytest.raises(ValueError, match="item 0: returned nan"):
        score("bad_metric:nan", ["a"], ["a"])


@pytest.mark.parametrize("metric,match", [
    ("bleu", "expected one of exact_match, choice"),
    ({"name": "regex"}, "pattern: expected a regular expression"),
    ({"name": "regex", "pattern": "("}, "not a valid regular expression"),
    ({"name": "choice", "labels": ["A"]}, "at least two distinct"),
    ({"name": "choice", "kappa_weights": "cubic"}, "kappa_weights"),
    ({"name": "exact_match", "strict": True}, r"unknown option\(s\) \['strict'\]"),
    (["exact_match"], "expected a metric name or a mapping"),
])
def test_bad_metric_options_name_the_field(metric, match):
    with pytest.raises(ValueError, match=match) as err:
        build_chat_scoring("chat", metric)
    assert "task.options.metric" in str(err.value)


def test_means_recompute():
    """Every chosen metric's primary number is the mean of its per-sample scores."""
    golds, gens = ["A", "B", "C"], ["A", "C", "x"]
    for metric in ("exact_match", "choice", {"name": "regex", "pattern": "[A-C]"}, "f1_list"):
        scoring = build_chat_scoring("chat", metric)
        metrics, samples = scoring.score(golds, gens)
        (key,) = scoring.primary
        assert metrics[key] == pytest.approx(sum(s["scores"][key] for s in samples) / 3)
