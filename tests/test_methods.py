"""The method table is the one place a method is defined: every reader follows it (no method names
compared elsewhere), so a new method is one row."""

from __future__ import annotations

import typing

import pytest

from distillkit_scd.config.methods import METHODS, ROWS, SCHEDULES, MethodSpec, method_spec


class _Pool:
    num_checkpoints, best_index = 4, 2


def test_every_schedule_is_built_and_an_unknown_one_is_refused():
    """`scd_selector.build_schedule` (used by distill and the DistillKit integration) builds each schedule name."""
    from distillkit_scd.schedules.scd_selector import build_schedule

    assert [build_schedule(k, _Pool()).checkpoint_for_stage(s)[0] for k in ("fixed", "cd") for s in (0, 3)] == \
        [2, 2, 0, 3]
    with pytest.raises(ValueError, match="probe set is empty"):  # the scd branch builds an SCDSelector
        build_schedule("scd", _Pool(), teacher=object(), probes=[])
    with pytest.raises(ValueError, match="expected fixed, cd or scd, got 'warm'"):
        build_schedule("warm", _Pool())
    assert {spec.schedule for spec in METHODS.values()} == set(SCHEDULES)


def test_readers_follow_the_table():
    """Recipe schema, DistillKit schedule names, Table 1 rows and the pipeline's stages come from the table."""
    from distillkit_scd.config import METHODS as CONFIG_METHODS
    from distillkit_scd.config.schema import Method
    from distillkit_scd.integrations.distillkit import ScheduleSettings
    from distillkit_scd.reporting.report import ROWS as REPORT_ROWS

    assert list(CONFIG_METHODS) == list(METHODS) == list(typing.get_args(Method)) == ["td", "taid", "cd", "scd",
                                                                                       "scd_aw"]
    hints = typing.get_type_hints(ScheduleSettings)
    assert typing.get_args(hints["method"]) == ("none", *SCHEDULES)
    assert REPORT_ROWS is ROWS and list(ROWS)[4:] == list(METHODS)
    assert [ROWS[m] for m in METHODS] == [s.label for s in METHODS.values()]


def test_method_rows_decide_teacher_weight_and_settings():
    """What each row means (the paper's methods): teacher schedule, AW, TAID, the settings it reads."""
    assert {m: (s.schedule, s.aw, s.taid) for m, s in METHODS.items()} == {
        "td": ("fixed", False, False), "taid": ("fixed", False, True), "cd": ("cd", False, False),
        "scd": ("scd", False, False), "scd_aw": ("scd", True, False)}
    assert [METHODS[m].divergence("reverse_kl") for m in ("td", "taid")] == ["reverse_kl", "taid"]
    assert MethodSpec("X", "scd", taid=True).settings == ("taid", "scd")
    with pytest.raises(ValueError, match="--method: expected one of td, taid, cd, scd, scd_aw, got 'kd'"):
        method_spec("kd")


def test_pipeline_stages_follow_the_table(monkeypatch):
    """The AW table stage exists for (and only feeds) methods whose row says `aw`; method settings enter the
    inputs of the methods that read them."""
    from distillkit_scd.config import recipe_from_dict
    from distillkit_scd.pipeline import run as pipeline

    recipe = recipe_from_dict({"name": "t", "output_dir": "/tmp/x", "models": {"teacher": "tiny:teacher",
                               "student": "tiny:student"}, "task": {"name": "synthetic"},
                               "distill": {"methods": ["td", "taid", "scd"]}})
    stages = {s.name: s for s in pipeline.build_stages(recipe)}
    assert "aw-table" not in stages
    assert "distill.taid.t_start" in stages["distill-taid"].inputs
    assert "distill.taid.t_start" not in stages["distill-td"].inputs
    assert "distill.scd.probe_size" in stages["distill-scd"].inputs
    monkeypatch.setitem(METHODS, "scd", MethodSpec("SCD", "scd", aw=True))  # a row change is all it takes
    stages = {s.name: s for s in pipeline.build_stages(recipe)}
    assert "aw-table" in stages and "aw-table" in stages["distill-scd"].needs
