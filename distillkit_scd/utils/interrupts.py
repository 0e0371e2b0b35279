"""Ctrl-C and SIGTERM: stop at once, say where, and leave a run that the same command resumes.

A terminal's Ctrl-C sends SIGINT to every process of the foreground group (the pipeline and the stage
it launched); a batch scheduler sends SIGTERM, often to the pipeline alone. Both become one
`KeyboardInterrupt` in the main thread (`install_handlers`); later signals are ignored, so the clean-up
that follows (a stamp, the summary) cannot itself be interrupted. Nothing here needs torch.

Who says what:
- a stage process started by the pipeline (`CHILD_ENV` set) prints nothing: it writes where it stopped
  (stage, optimizer step) to the file `CHILD_ENV` names and exits with `EXIT_CODE`;
- the pipeline forwards a signal to its stage process, waits for it, records the stage as `interrupted`
  and raises `Interrupted`; the command line prints `Interrupted.message()` once and exits 130.

The step is the last finished optimizer step, noted by the trainers' per-step callback (`note_step`);
stages without optimizer steps (evaluation, AW table) are named without one.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distillkit_scd.utils.log import process_rank

EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C; used for SIGTERM too
CHILD_ENV = "DISTILLKIT_SCD_INTERRUPT_FILE"
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_where: dict = {"stage": None, "step": None, "signalled": False}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT/SIGTERM in `stage` (None: between stages) after optimizer `step`."""

    def __init__(self, stage: str | None = None, step: int | None = None):
        super().__init__(stage, step)
        self.stage, self.step = stage, step

    def message(self) -> str:
        where = f" in stage {self.stage}" if self.stage else ""
        where += f" at step {self.step}" if self.step is not None else ""
        return f"interrupted{where}; run the same command again to resume"


def note_stage(name: str | None) -> None:
    """The stage now running in this process (its step count restarts)."""
    _where.update(stage=name, step=None)


def note_step(step: int) -> None:
    """The optimizer steps finished so far in the current stage (called once per step)."""
    _where["step"] = int(step)


def current(err: BaseException | None = None) -> Interrupted:
    """`err` itself if it already says where, else an `Interrupted` at this process's noted position."""
    if isinstance(err, Interrupted):
        return err
    return Interrupted(_where["stage"], _where["step"])


def _raise_once(signum, frame) -> None:
    for sig in SIGNALS:  # the clean-up after the first signal must not be cut short by a second
        signal.signal(sig, signal.SIG_IGN)
    _where["signalled"] = True
    raise KeyboardInterrupt


@contextmanager
def handlers() -> Iterator[None]:
    """SIGINT and SIGTERM raise `KeyboardInterrupt` (once) inside the block; the previous handlers come
    back after it. Outside the main thread (signals cannot be handled there) the block runs unchanged."""
    try:
        previous = {sig: signal.signal(sig, _raise_once) for sig in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    _where["signalled"] = False
    try:
        yield
    finally:
        # A stage process that was signalled is on its way out, and the pipeline forwards a second copy of
        # Ctrl-C (the terminal sent one to the whole group): restoring Python's default handler here would
        # let that copy raise again while the process reports and exits. Elsewhere the handlers come back.
        if not (_where["signalled"] and os.environ.get(CHILD_ENV)):
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def report_as_child(err: BaseException) -> bool:
    """In a stage process the pipeline started: write where it stopped for the pipeline and return True
    (the caller then exits quietly); False in a process nobody else reports for."""
    path = os.environ.get(CHILD_ENV)
    if not path:
        return False
    for sig in SIGNALS:  # the pipeline forwards the signal too: a late copy must not hit the interpreter's exit
        signal.signal(sig, signal.SIG_IGN)
    if process_rank() != 0:  # under `accelerate launch` every rank has the variable; rank 0 reports
        return True
    where = current(err)
    try:
        Path(path).write_text(json.dumps({"stage": where.stage, "step": where.step}), encoding="utf-8")
    except OSError:
        pass  # the pipeline then reports the stage without a step
    return True


def read_child_report(path: Path) -> int | None:
    """The step a stage process reported in `path` (None if it wrote nothing usable)."""
    try:
        step = json.loads(path.read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None
