"""Artifacts are strict JSON: no NaN/Infinity tokens (which strict parsers reject), and a null that
replaced one says why."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distillkit_scd.evaluation.metrics import cohen_kappa
from distillkit_scd.evaluation.results import build_results, load_results, write_results
from distillkit_scd.evaluation.scoring import score_task
from distillkit_scd.utils.atomic import atomic_write_json


def _refuse(token: str):
    raise ValueError(f"non-standard JSON constant {token}")


def strict_load(path: Path):
    """Parse like a strict parser: NaN, Infinity and -Infinity are errors."""
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse)


def assert_strict_json_tree(root: Path) -> int:
    """Every *.json under `root` parses strictly; returns how many files were checked."""
    paths = sorted(root.rglob("*.json"))
    for path in paths:
        try:
            strict_load(path)
        except ValueError as err:
            raise AssertionError(f"{path}: not strict JSON ({err})") from None
    return len(paths)


def test_strict_parser_refuses_what_python_writes_by_default(tmp_path):
    """The check can fail: Python's default json.dumps writes NaN, which the strict parser rejects."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": float("nan")}))
    with pytest.raises(ValueError, match="NaN"):
        strict_load(bad)


def test_atomic_write_json_writes_null_and_records_what_it_replaced(tmp_path):
    """NaN/±inf at any depth become null; `nonfinite` maps each one's dotted path to its value."""
    path = atomic_write_json(tmp_path / "a.json", {"loss": float("nan"), "ok": 1.5,
                                                   "log": [{"step": 1, "g": float("inf")}, {"g": -math.inf}]})
    data = strict_load(path)
    assert data["loss"] is None and data["ok"] == 1.5 and data["log"][0] == {"step": 1, "g": None}
    assert data["nonfinite"] == {"loss": "nan", "log.0.g": "inf", "log.1.g": "-inf"}
    clean = strict_load(atomic_write_json(tmp_path / "b.json", {"a": [1, 2.0]}))
    assert clean == {"a": [1, 2.0]}  # nothing replaced: no extra key


def test_undefined_kappa_is_null_with_its_reason_and_the_file_reads_back(tmp_path):
    """A constant prediction against constant gold (CRADE): kappa is 0/0 (NaN, as scikit-learn); the
    results file holds null plus the reason, parses strictly and passes `load_results`."""
    golds, generations = ["A", "A", "A"], ["A", "A", "A"]
    assert math.isnan(cohen_kappa(golds, golds, "linear"))
    metrics, samples = score_task("crade", golds, generations)
    assert math.isnan(metrics["kappa"])
    samples = [{"id": i, "gold": g, "generation": t, **s} for i, (g, t, s) in enumerate(zip(golds, generations,
                                                                                         samples))]
    result = build_results("crade", "td", {"definition": "d", "sizes": {}}, {"path": "m"}, metrics, samples,
                           {"max_new_tokens": 4})
    path = write_results(tmp_path / "crade.json", result)
    data = strict_load(path)
    assert data["metrics"]["kappa"] is None and data["metrics"]["accuracy"] == 1.0
    assert "0/0" in data["undefined_metrics"]["kappa"]
    assert load_results(path)["metrics"]["kappa"] is None


def test_a_null_primary_metric_is_still_refused(tmp_path):
    """Only extra metrics may be undefined: a Table 1 metric must be a number."""
    metrics = {"accuracy": float("nan")}
    samples = [{"id": 0, "gold": "a", "generation": "a", "prediction": "a", "scores": {"accuracy": 1.0}}]
    with pytest.raises(ValueError, match="metrics.accuracy"):
        build_results("synthetic", "td", {"definition": "d"}, {"path": "m"}, metrics, samples, {})
