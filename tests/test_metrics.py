"""Every parsing rule and metric against hand-computed cases, including the data README's quirks."""

import math

import pytest

from distillkit_scd.evaluation.metrics import (
    accuracy,
    cohen_kappa,
    macro_f1,
    ner_f1,
    ner_scores,
    parse_choice,
    parse_ner,
    parse_yes_no_maybe,
)
from distillkit_scd.evaluation.scoring import score_task, scoring_for


@pytest.mark.parametrize("text,want", [
    ("C", "C"),
    ("Answer: C", "A"),  # quirk: the capital A of "Answer" is taken first
    ("答えはＢです B", "B"),  # full-width letters are not recognised
    ("the answer is f or F", "F"),  # F accepted even if the row has fewer options
    ("GHIJ", None),
    ("", None),
])
def test_parse_choice_first_ascii_capital_a_to_f(text, want):
    """JMED rule: the first ASCII capital A–F in the text, else None."""
    assert parse_choice(text) == want


def test_parse_ner_literal_only_never_eval(tmp_path):
    """Whole-text list literals parse; anything else (extra text, fences, code) is [] and never runs."""
    assert parse_ner("['発熱', '嘔気']") == ["発熱", "嘔気"]
    assert parse_ner("  ['a']\n") == ["a"]
    assert parse_ner("Answer: ['a']") == []
    assert parse_ner("```python\n['a']\n```") == []
    assert parse_ner("'a'") == []  # not a list
    assert parse_ner("['a', 'b'") == []  # truncated
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('x') or ['a']"
    assert parse_ner(code) == []
    assert not marker.exists()
    assert parse_ner("[__import__('os').system('true')]") == []


def test_ner_f1_hand_computed():
    """Exact, partial (upstream set-membership, can exceed 1) and substring F1 per item."""
    assert ner_f1(["a", "b", "c"], ["a", "x"], "partial") == pytest.approx(1.2)
    assert ner_f1(["a", "b", "c"], ["a", "x"], "exact") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert ner_f1(["発熱"], ["発熱あり"], "exact") == 0.0
    assert ner_f1(["発熱"], ["発熱あり"], "partial") == 0.0  # substring overlap alone earns nothing
    assert ner_f1(["発熱"], ["発熱あり"], "substring") == 1.0
    assert ner_f1(["a", "b"], [], "exact") == 0.0
    assert ner_f1(["a", "b"], [], "partial") == 0.0
    assert ner_f1(["a", "a", "b"], ["a", "b", "b"], "exact") == 1.0  # duplicates removed
    # partial with overlap: F1 = 2|G|/(|G|+|P|)
    assert ner_f1(["a"], ["a", "x", "y"], "partial") == pytest.approx(2 * 1 / 4)
    with pytest.raises(ValueError):
        ner_f1([], ["a"], "exact")


def test_accuracy_and_macro_f1_sklearn_semantics():
    """Macro-F1 over the union of gold and predicted labels: an invalid prediction adds a 0-F1 class."""
    gold = ["yes", "no", "maybe", "yes"]
    pred = ["yes", "no", "no", "invalid"]
    assert accuracy(gold, pred) == 0.5
    # per class: yes F1 = 2/3 (tp1 fn1), no F1 = 2/3 (tp1 fp1), maybe 0, invalid 0 → mean over 4 classes
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 2 / 3) / 4)


def test_cohen_kappa_hand_computed():
    """Unweighted and linear-weighted kappa on a 3-label case worked by hand; None is its own label."""
    gold = ["A", "A", "B", "B", "C", "C"]
    pred = ["A", "B", "B", "B", "C", "A"]
    # p_o = 4/6; marginals gold (2,2,2), pred (2,3,1): p_e = (2*2 + 2*3 + 2*1)/36 = 12/36
    assert cohen_kappa(gold, pred) == pytest.approx((4 / 6 - 12 / 36) / (1 - 12 / 36))
    # linear: observed = (|0-1| + |2-0|)/6 = 3/6; expected = Σ|i-j| r_i c_j / n² = (6+4+4+2+8+6)/36
    assert cohen_kappa(gold, pred, "linear") == pytest.approx(1 - (3 / 6) / (30 / 36))
    assert cohen_kappa(["A", "B"], [None, "B"]) == pytest.approx(cohen_kappa(["A", "B"], ["None", "B"]))
    assert math.isnan(cohen_kappa(["A", "A"], ["A", "A"]))


def test_pubmedqa_parsing_rule():
    """First whole word yes/no/maybe (any case); otherwise invalid."""
    assert parse_yes_no_maybe("Yes, it does.") == "yes"
    assert parse_yes_no_maybe("The answer is maybe; no evidence") == "maybe"
    assert parse_yes_no_maybe("Noted: yes") == "yes"  # 'Noted' is not the word 'no'
    assert parse_yes_no_maybe("unclear") == "invalid"


def test_score_task_records_recompute_metrics():
    """Per-sample scores average to the reported metric (what the Table 1 report relies on)."""
    metrics, samples = score_task("jmmlu", ["A", "B", "C"], ["A", "Answer: B", "xyz"])
    assert [s["prediction"] for s in samples] == ["A", "A", "None"]
    assert metrics["accuracy"] == pytest.approx(sum(s["scores"]["accuracy"] for s in samples) / 3)
    assert [s["parsed"] for s in samples] == [True, True, False] and metrics["unparsed"] == 1
    metrics, samples = score_task("nrner", ["['a', 'b', 'c']", "['d']"], ["['a', 'x']", "oops"])
    assert metrics["partial_f1"] == pytest.approx((1.2 + 0) / 2)
    assert metrics["exact_f1"] == pytest.approx(sum(s["scores"]["exact_f1"] for s in samples) / 2)
    assert [s["parsed"] for s in samples] == [True, False] and metrics["unparsed"] == 1


def test_kappa_and_macro_f1_match_scikit_learn_when_installed():
    """Cross-check against scikit-learn on random labels, when it is installed (not a dependency)."""
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed; hand-computed cases cover it")
    import random

    r = random.Random(0)
    for _ in range(20):
        gold = [r.choice("ABCD") for _ in range(30)]
        pred = [r.choice(["A", "B", "C", "D", "None"]) for _ in range(30)]
        for w in (None, "linear"):
            assert cohen_kappa(gold, pred, w) == pytest.approx(sk.cohen_kappa_score(gold, pred, weights=w))
        assert macro_f1(gold, pred) == pytest.approx(sk.f1_score(gold, pred, average="macro"))


def test_ner_scores_mean_of_items():
    """Task-level NER score per mode = unweighted mean of per-item F1 (macro over items, not micro)."""
    golds = [["a", "b", "c"], ["d"], ["発熱"]]
    preds = [["a", "x"], [], ["発熱あり"]]
    got = ner_scores(golds, preds)
    exact0 = 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)
    assert got["exact_f1"] == pytest.approx(exact0 / 3)
    assert got["partial_f1"] == pytest.approx(1.2 / 3)
    # substring: item 0 recall 1/3 precision 1/2 (as exact), item 2 = 1
    assert got["substring_f1"] == pytest.approx((exact0 + 0 + 1) / 3)
    # micro-F1 over entities would differ: 1 match / (5 gold, 3 predicted)
    assert got["exact_f1"] != pytest.approx(2 * 1 / (5 + 3))
    with pytest.raises(ValueError):
        ner_scores([["a"]], [])


@pytest.mark.parametrize("task,golds,gens,want", [
    ("pubmedqa", ["yes", "no", "maybe"], ["Yes.", "I think not", "maybe"],
     {"accuracy": 2 / 3, "invalid": 1, "unparsed": 1}),
    ("synthetic", ["K12", "4"], [" K12\n", "four"], {"accuracy": 0.5, "unparsed": 0}),
    ("smdis", ["A", "B", "B", "A"], ["A", "B", "none", "B"], {"accuracy": 0.5, "unparsed": 1}),
])
def test_score_task_per_task_rules(task, golds, gens, want):
    """Each task uses its parse rule; 'unparsed' counts outputs without an answer (always wrong)."""
    metrics, samples = score_task(task, golds, gens)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value), key
    for key in scoring_for(task).primary:
        assert metrics[key] == pytest.approx(sum(s["scores"][key] for s in samples) / len(samples))


def test_score_task_kappa_weights_per_task():
    """CRADE's kappa is linearly weighted (ordinal labels), the other choice tasks' unweighted."""
    golds, gens = ["A", "B", "C", "D", "A", "D"], ["B", "B", "D", "D", "A", "A"]
    assert score_task("crade", golds, gens)[0]["kappa"] == pytest.approx(cohen_kappa(golds, gens, "linear"))
    assert score_task("rrtnm", golds, gens)[0]["kappa"] == pytest.approx(cohen_kappa(golds, gens))
    assert cohen_kappa(golds, gens) != pytest.approx(cohen_kappa(golds, gens, "linear"))


def test_score_task_rejects_bad_input():
    """Unknown task, length mismatch, empty input and unreadable NER gold are ValueErrors naming the problem."""
    with pytest.raises(ValueError, match="expected one of.*got 'mmlu'"):
        score_task("mmlu", ["A"], ["A"])
    with pytest.raises(ValueError, match="1 gold answers but 2"):
        score_task("jmmlu", ["A"], ["A", "B"])
    with pytest.raises(ValueError, match="item 0"):
        score_task("nrner", ["not a list"], ["[]"])
    assert score_task("nrner", [["a"]], ["['a']"])[0]["exact_f1"] == 1.0  # gold may already be a list


def test_primary_metric_names():
    """Primary metrics come from the registry entry's Table 1 columns: accuracy, NRNER's pair of F1s."""
    assert scoring_for("jmmlu").primary == ("accuracy",)
    assert scoring_for("nrner").primary == ("exact_f1", "partial_f1")
    assert {t: scoring_for(t).primary for t in ("synthetic", "pubmedqa", "crade", "rrtnm", "smdis")} == {
        t: ("accuracy",) for t in ("synthetic", "pubmedqa", "crade", "rrtnm", "smdis")}


def test_kappa_none_label_sorts_after_f():
    """'None' is its own label sorted after the letters: linear weights put it furthest from A.

    gold [A, B], pred [None, B]; labels A, B, None at positions 0, 1, 2. Confusion (A,None)=1, (B,B)=1;
    expected counts row⊗col/n: (A,B)=.5, (A,None)=.5, (B,B)=.5, (B,None)=.5.
    linear: 1 − (2·1)/(1·.5 + 2·.5 + 1·.5) = 0  (had None sorted first, positions None0 A1 B2: 0.5).
    unweighted: 1 − 1/(.5 + .5 + .5) = 1/3.
    """
    assert cohen_kappa(["A", "B"], [None, "B"], "linear") == pytest.approx(0.0)
    assert cohen_kappa(["A", "B"], [None, "B"]) == pytest.approx(1 / 3)


def test_majority_baseline_hand_computed():
    """The majority baseline predicts the most frequent train answer (ties → smallest) and scores it with
    the task's own metrics: accuracy = test frequency of that answer; NRNER uses the list literal."""
    from distillkit_scd.evaluation.baselines import majority_answer, majority_baseline, table_row

    assert majority_answer(list("ABBCC")) == "B"
    with pytest.raises(ValueError):
        majority_answer([])
    metrics, samples, answer = majority_baseline("crade", list("AAAB"), list("ABDA"))
    assert answer == "A" and metrics["accuracy"] == 0.5
    assert metrics["kappa"] == pytest.approx(0.0)  # a constant prediction agrees only by chance
    metrics, _, answer = majority_baseline("nrner", ["['a']", "['a']", "['b', 'c']"], ["['a', 'd']", "['c']"])
    assert answer == "['a']"
    assert metrics["exact_f1"] == pytest.approx((2 * 0.5 * 1 / 1.5 + 0) / 2)
    assert metrics["partial_f1"] == pytest.approx((2 * 2 / 3 + 0) / 2)
    row = table_row({"jmmlu": {"accuracy": 0.25}, "nrner": {"exact_f1": 0.1, "partial_f1": 0.3}})
    assert row == {"JMMLU": 0.25, "NRNER exact": 0.1, "NRNER partial": 0.3, "Avg": pytest.approx(0.65 / 3)}


def test_majority_baseline_on_real_data(shared_data, monkeypatch):
    """On the real splits every task loads and scores; the baseline's accuracy equals the test share of
    the majority train answer (a sanity anchor for Table 1)."""
    from distillkit_scd.evaluation.baselines import run_majority_baselines
    from distillkit_scd.tasks import load_task

    monkeypatch.setenv("DISTILLKIT_SCD_DATA", str(shared_data))  # the default data root (the fixture skips if absent)
    got = run_majority_baselines(["pubmedqa", "crade"])
    for task, entry in got.items():
        test = list(load_task(task)["test"]["answer"])
        assert entry["metrics"]["accuracy"] == pytest.approx(test.count(entry["answer"]) / len(test))
