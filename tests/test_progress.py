"""Progress for log files: the pipeline's time-left estimate and line-based progress of long passes."""

from __future__ import annotations

import logging

import pytest

from distillkit_scd.utils.progress import ProgressLog, StageClock


def test_stage_clock_estimates_by_own_history_then_same_kind_then_any_kind():
    """Hand-computed: a stage's previous duration wins; else the mean of finished stages of its kind;
    else of all finished stages; unknown until something finished."""
    clock = StageClock({"sft-teacher": ("sft", None), "sft-student": ("sft", None),
                        "eval-td": ("evaluate", 10.0), "distill-td": ("distill", None)})
    assert clock.left() is None and "once a stage has finished" in clock.text()
    clock.done("sft-teacher", 30.0)
    assert clock.left() == pytest.approx(30.0 + 10.0 + 30.0)  # sft mean, own history, any-kind mean
    assert clock.text() == "~70 s left in all (rough: no distill stage timed yet)"
    clock.done("sft-student", 90.0)
    assert clock.left() == pytest.approx(10.0 + 60.0)
    assert clock.text() == "~70 s left in all (rough: no distill stage timed yet)"
    clock.done("distill-td", 600.0)
    assert clock.left() == pytest.approx(10.0)
    assert clock.text() == "~10 s left in all"
    assert StageClock({"a": ("sft", 600.0)}).text() == "~10 min left in all"


def test_progress_log_writes_at_most_one_line_per_interval_and_the_last(caplog):
    """With a long interval only the final count is logged; with none, every update."""
    log = logging.getLogger("distillkit_scd.test_progress")
    with caplog.at_level(logging.INFO, logger=log.name):
        quiet = ProgressLog("AW table: student", 5, every=1e9, log=log)
        for _ in range(5):
            quiet.update()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["AW table: student: 5/5 batches"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=log.name):
        chatty = ProgressLog("signals", 3, every=0.0, log=log)
        for _ in range(3):
            chatty.update()
    assert len(caplog.records) == 3 and "s left" in caplog.records[0].getMessage()


def test_quiet_logs_warnings_only_switches_bars_off_and_reaches_stage_processes(monkeypatch):
    """`--quiet`: root level WARNING, bars off, and the environment tells stage processes the same."""
    from distillkit_scd.utils.log import QUIET_ENV, setup_logging
    from distillkit_scd.utils.progress import progress_bars

    for name in (QUIET_ENV, "TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "")  # restored to what it was (usually unset) after the test
    setup_logging(quiet=True)
    try:
        import os

        assert logging.getLogger().level == logging.WARNING
        assert os.environ[QUIET_ENV] == "1" and os.environ["TQDM_DISABLE"] == "1" and not progress_bars()
    finally:
        monkeypatch.setenv(QUIET_ENV, "")
        setup_logging()
