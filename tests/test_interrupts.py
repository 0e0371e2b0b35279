"""Ctrl-C and SIGTERM: one line naming the stage and step, exit code 130, the stage recorded as
`interrupted` (never left `running`), no traceback, and the same command afterwards finishes the run.

The slow test drives the real command line as a user's terminal would: `distillkit-scd run` with each
stage in its own process, SIGINT to the whole process group (what Ctrl-C sends) in the middle of the
teacher's SFT. The fast tests cover the other two paths with stand-ins for the stage itself: SIGTERM to
the pipeline alone (forwarded to its stage process) and an in-process stage (the quickstart's mode).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from distillkit_scd.cli import main
from distillkit_scd.pipeline import run as pipeline
from distillkit_scd.utils import interrupts
from tests.test_strict_json import assert_strict_json_tree


def _stamp(run: Path, stage: str) -> dict:
    return json.loads((run / "stages" / f"{stage}.json").read_text(encoding="utf-8"))


def _summary(run: Path) -> dict[str, str]:
    data = json.loads((run / "stages" / "summary.json").read_text(encoding="utf-8"))
    return {s["stage"]: s["status"] for s in data["stages"]}


@pytest.mark.slow
def test_ctrl_c_during_a_stage_process_prints_one_line_and_the_same_command_resumes(tmp_path):
    """SIGINT to the process group mid-SFT: exit 130, exactly one 'interrupted in stage sft-teacher at
    step N' line, no traceback, stamp and summary say interrupted; re-running completes every stage."""
    from tests.test_end_to_end import write_recipe

    recipe = write_recipe(tmp_path, methods="[td]", zero_shot="false")
    run = tmp_path / "run"
    log = tmp_path / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distillkit_scd", "run", str(recipe)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while proc.poll() is None and not list((run / "sft" / "teacher").glob("checkpoint-*")) \
            and time.time() < deadline:
        time.sleep(0.02)
    running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=120)
    text = log.read_text(errors="replace")
    assert running, f"the run ended (exit {proc.returncode}) before the interrupt:\n{text[-3000:]}"
    assert code == interrupts.EXIT_CODE, text[-3000:]
    lines = [line for line in text.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("interrupted in stage sft-teacher at step "), lines
    assert lines[0].endswith("; run the same command again to resume")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "\r" not in text and "\x1b[" not in text  # not a terminal: no progress bars, no escape codes
    assert "[1/7] sft-teacher" in text and "time left estimated once a stage has finished" in text
    stamp = _stamp(run, "sft-teacher")
    assert stamp["status"] == "interrupted" and stamp["step"] == int(lines[0].split("step ")[1].split(";")[0])
    assert _summary(run)["sft-teacher"] == "interrupted"
    assert "running" not in _summary(run).values()

    assert main(["run", str(recipe), "--in-process"]) == 0
    assert set(_summary(run).values()) == {"done"}
    assert (run / "results" / "td" / "synthetic.json").is_file()
    assert assert_strict_json_tree(run) > 20  # results, manifests, stamps, summary, checkpoints' JSON


CHILD = textwrap.dedent("""
    import sys, time
    from distillkit_scd.utils import interrupts
    with interrupts.handlers():
        try:
            interrupts.note_stage("distill-td")
            interrupts.note_step(4)
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt as err:
            interrupts.report_as_child(err)
            sys.exit(interrupts.EXIT_CODE)
    sys.exit(0)
""")


def test_sigterm_to_the_pipeline_is_forwarded_and_the_stage_step_comes_back(tmp_path):
    """A scheduler's SIGTERM to the pipeline process alone reaches the stage process, which reports its
    step through the interrupt file; the runner raises `Interrupted` for that stage and step."""
    stage = pipeline.Stage("distill-td", ("distill", "--method", "td"))
    cmd = [sys.executable, "-c", CHILD]
    ready = tmp_path / "child.out"
    sent = threading.Event()

    def terminate_when_ready():
        deadline = time.time() + 60
        while time.time() < deadline and not (ready.exists() and "ready" in ready.read_text()):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)
        sent.set()

    real_popen = subprocess.Popen

    def popen(args, **kwargs):  # capture the child's stdout to see when it is ready
        return real_popen(args, stdout=open(ready, "w"), **kwargs)

    with pytest.MonkeyPatch.context() as mp, interrupts.handlers():
        mp.setattr(pipeline.subprocess, "Popen", popen)
        threading.Thread(target=terminate_when_ready, daemon=True).start()
        with pytest.raises(interrupts.Interrupted) as caught:
            pipeline._subprocess_runner(stage, cmd)
    assert sent.is_set()
    assert (caught.value.stage, caught.value.step) == ("distill-td", 4)
    assert caught.value.message() == "interrupted in stage distill-td at step 4; run the same command again to resume"


LATE_COPY = textwrap.dedent("""
    import os, signal, sys, time
    from distillkit_scd import cli
    from distillkit_scd.utils import interrupts

    def stage(args):  # a stage that has finished 2 optimizer steps when Ctrl-C arrives
        interrupts.note_step(2)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    real_report = interrupts.report_as_child

    def late_copy_then_report(err):  # the pipeline's forwarded copy lands after the handler block
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        return real_report(err)

    cli._dispatch, interrupts.report_as_child = stage, late_copy_then_report
    sys.exit(cli.main(["validate", "any.yaml"]))
""")


def test_stage_process_ignores_the_forwarded_copy_of_ctrl_c(tmp_path):
    """Ctrl-C reaches a stage process twice (the terminal signals the whole group, the pipeline forwards
    its own copy). The second copy may land after the CLI's handler block has ended: it must not raise
    again (that printed a second traceback and lost the step report); the step still comes back."""
    report = tmp_path / "interrupt.json"
    env = {**os.environ, interrupts.CHILD_ENV: str(report)}
    proc = subprocess.run([sys.executable, "-c", LATE_COPY], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == interrupts.EXIT_CODE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr[-3000:]
    assert interrupts.read_child_report(report) == 2


def test_in_process_interrupt_is_recorded_and_the_cli_prints_one_line(tmp_path, monkeypatch, capsys):
    """The quickstart's in-process stages: a SIGINT inside the first stage → exit 130, one line on stderr,
    the stage's stamp and the summary say interrupted with the step; no later stage ran."""
    from tests.test_end_to_end import write_recipe

    recipe = write_recipe(tmp_path, methods="[td]", zero_shot="false")
    visited = []

    def runner_for(recipe):
        def run(stage, cmd):
            visited.append(stage.name)
            interrupts.note_stage(stage.name)
            interrupts.note_step(3)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
            return 0
        return run

    monkeypatch.setattr(pipeline, "_in_process_runner", runner_for)
    monkeypatch.setattr(pipeline, "prepare_models", lambda recipe: None)
    before = signal.getsignal(signal.SIGINT)
    assert main(["run", str(recipe), "--in-process"]) == interrupts.EXIT_CODE
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == ["interrupted in stage sft-teacher at step 3; run the same command again to resume"]
    assert "Traceback" not in err
    assert visited == ["sft-teacher"]
    run = tmp_path / "run"
    assert _stamp(run, "sft-teacher")["status"] == "interrupted" and _stamp(run, "sft-teacher")["step"] == 3
    assert _summary(run)["sft-teacher"] == "interrupted" and _summary(run)["sft-student"] == "pending"
    assert signal.getsignal(signal.SIGINT) is before  # the CLI gave the handler back
