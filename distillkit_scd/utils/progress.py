"""Progress that reads well in a log file: bars only on a terminal, line-based progress for long passes,
and the pipeline's estimate of the time left.

Redirected to a file, a progress bar is kilobytes of carriage returns and escape codes per stage; the
pipeline's stage lines, the trainers' loss lines and `ProgressLog` say the same in a few lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_BAR_SWITCHES = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")


def switch_off_bars() -> None:
    """Turn off tqdm, datasets and Hub progress bars in this process and the stage processes it starts
    (through the environment, which those libraries read when imported: call before importing them)."""
    for name in _BAR_SWITCHES:
        os.environ[name] = "1"


def progress_bars() -> bool:
    """Whether to draw our own progress bars: on a terminal, unless switched off (`--quiet`)."""
    return sys.stderr.isatty() and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true")


class ProgressLog:
    """Line-based progress of a long pass: one log line at most every `every` seconds, and one at the end,
    with the time elapsed and the time left.

    Args:
        what: what is counted, e.g. "AW table: teacher checkpoint 2/4".
        total: the count at which the pass is done.
        unit: the counted thing ("batches").
    """

    def __init__(self, what: str, total: int, unit: str = "batches", every: float = 30.0,
                 log: logging.Logger | None = None):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.log = log or logging.getLogger("distillkit_scd")
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.done < self.total and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        self.log.info("%s: %d/%d %s, %.0f s elapsed%s", self.what, self.done, self.total, self.unit, elapsed,
                      f", ~{left:.0f} s left" if self.done < self.total else "")


class StageClock:
    """Time left in a pipeline run, for its "~M min left" line.

    A stage is estimated by its own duration in its last attempt (stage stamps record it), else by the
    mean of this run's finished stages of the same kind (`sft`, `distill`, `evaluate`, ...), else of any
    kind; until one of those exists the time left is unknown and said so.

    Args:
        to_run: {stage name: (kind, seconds of its last attempt or None)} for the stages this run will run.
    """

    def __init__(self, to_run: dict[str, tuple[str, float | None]]):
        self.to_run = dict(to_run)
        self.finished: dict[str, tuple[str, float]] = {}

    def done(self, name: str, seconds: float) -> None:
        self.finished[name] = (self.to_run.get(name, ("", None))[0], seconds)

    def left(self) -> float | None:
        """Estimated seconds for the stages not finished yet (None when one of them cannot be estimated)."""
        return self._estimate()[0]

    def _estimate(self) -> tuple[float | None, list[str]]:
        """(seconds left or None, the kinds estimated from other kinds' durations)."""
        total, borrowed = 0.0, []
        for name, (kind, previous) in self.to_run.items():
            if name in self.finished:
                continue
            same = [s for k, s in self.finished.values() if k == kind]
            every = [s for _, s in self.finished.values()]
            if previous is None and not same and kind not in borrowed:
                borrowed.append(kind)
            guess = previous if previous is not None else (sum(same) / len(same) if same else
                                                            sum(every) / len(every) if every else None)
            if guess is None:
                return None, borrowed
            total += guess
        return total, borrowed

    def text(self) -> str:
        left, borrowed = self._estimate()
        if left is None:
            return "time left estimated once a stage has finished"
        amount = f"~{left / 60:.0f} min" if left >= 90 else f"~{left:.0f} s"
        return f"{amount} left in all" + (f" (rough: no {', '.join(borrowed)} stage timed yet)" if borrowed else "")
