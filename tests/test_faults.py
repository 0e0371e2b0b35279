"""Faults survived: a SIGKILL in the middle of a stage, then the same command again, gives what an
uninterrupted run gives; a crash during an artifact write leaves the previous artifact whole; a full
disk and an unreadable checkpoint are errors that name the file.

The kill tests launch the real CLI (`python -m distillkit_scd <stage> RECIPE ...`) in a subprocess, wait
for a file (or log line) that marks the middle of the stage, SIGKILL it, check it was still running and
left no final artifact, then run the same command again (in this process, through `cli.main`, to save
the ~8 s of imports a second subprocess would cost) and compare with an uninterrupted run of the same
recipe. Everything runs on CPU with one thread, where every stage is deterministic, so the comparisons
are bitwise; the only differences allowed are the run folder's own path inside manifests and tables
(each test works on a copy of the reference run, so absolute paths differ by that prefix).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def _write_recipe(folder: Path) -> Path:
    """The micro recipe of tests/test_end_to_end.py with T = 6, so each distillation stage lasts long enough
    (one epoch) to be killed in the middle."""
    from tests.test_end_to_end import write_recipe

    return write_recipe(folder, methods="[td, taid]", T=6, zero_shot="false")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run (in this process): both SFTs, the AW table, TD, TAID and the student_sft
    evaluation. Returns its run folder."""
    from distillkit_scd.config import load_recipe
    from distillkit_scd.evaluation.stage import run_evaluation
    from distillkit_scd.teachers.aw_table import run_aw_table
    from distillkit_scd.training.distill import run_distill
    from distillkit_scd.training.sft import run_sft

    recipe = load_recipe(_write_recipe(tmp_path_factory.mktemp("reference")))
    run_sft(recipe, "teacher")
    run_sft(recipe, "student")
    run_aw_table(recipe)
    for method in ("td", "taid"):
        run_distill(recipe, method)
    run_evaluation(recipe, "student_sft")
    return Path(recipe.output_dir)


def _copy_without(reference: Path, tmp_path: Path, *drop: str) -> Path:
    """A copy of the reference run in tmp_path (recipe included) without the artifacts in `drop`."""
    recipe = _write_recipe(tmp_path)
    shutil.copytree(reference, tmp_path / "run")
    for rel in drop:
        target = tmp_path / "run" / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return recipe


def _kill_when(args: list[str], ready, what: str, log: Path) -> None:
    """Run `python -m distillkit_scd *args`, SIGKILL it as soon as `ready()` is true; fail if it never got
    there or had already finished (then the kill point proves nothing)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distillkit_scd", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tail = log.read_text(errors="replace")[-3000:]
    assert ready(), f"{what} never happened (exit code {proc.returncode}); output:\n{tail}"
    assert running, f"the run finished (exit code {proc.returncode}) before it could be killed after {what}"
    assert proc.returncode == -signal.SIGKILL


def _log_has(log: Path, text: str):
    return lambda: log.is_file() and text in log.read_text(errors="replace")


def _rerun(args: list[str]) -> None:
    from distillkit_scd.cli import main

    assert main(args) == 0


def _weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p / "model.safetensors")) for p in sorted(folder.glob("checkpoint-*"))}


def _assert_same_weights(got: Path, want: Path) -> None:
    a, b = _weights(got), _weights(want)
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    for ckpt in b:
        assert a[ckpt].keys() == b[ckpt].keys()
        for name in b[ckpt]:
            torch.testing.assert_close(a[ckpt][name], b[ckpt][name], rtol=0, atol=0, msg=f"{ckpt} {name}")


def _json(path: Path, *roots: Path):
    """A JSON artifact with the run folders' paths replaced by <run> (the only expected difference; a
    copy's manifests still name the reference's checkpoints, so both roots can appear)."""
    text = path.read_text(encoding="utf-8")
    for root in roots:
        text = text.replace(str(root), "<run>")
    return json.loads(text)


@pytest.mark.slow
def test_killed_teacher_sft_resumes_to_the_same_checkpoints(reference, tmp_path):
    """Teacher SFT killed after its first checkpoint (of 2) is saved: the same command resumes from it
    (the checkpoint is not rewritten) and ends with every checkpoint's weights bitwise equal to the
    uninterrupted run's and the same manifest (validation losses, p(best)); it has no timing fields."""
    recipe = _copy_without(reference, tmp_path, "sft/teacher")
    out = tmp_path / "run" / "sft" / "teacher"
    first = out / "checkpoint-6" / "trainer_state.json"  # written last in a trainer save
    args = ["sft", str(recipe), "--role", "teacher"]
    _kill_when(args, first.is_file, "the first checkpoint", tmp_path / "killed.log")
    assert not (out / "manifest.json").exists()
    saved_at = first.stat().st_mtime_ns

    _rerun(args)
    assert first.stat().st_mtime_ns == saved_at  # resumed from it, not retrained from scratch
    _assert_same_weights(out, reference / "sft" / "teacher")
    assert _json(out / "manifest.json", tmp_path / "run", reference) == _json(reference / "sft" / "teacher" / "manifest.json",
                                                                   reference)


@pytest.mark.slow
def test_killed_aw_table_leaves_no_partial_table_and_recomputes_the_same(reference, tmp_path):
    """The AW table is computed in memory in one go (no partial progress is kept: its only cache is a
    whole table keyed by the content of the models and data) and written at the end, tensors first and
    the JSON last, each atomically. Killed between teacher checkpoints, it leaves no table file at all
    (nor a temporary one); the same command then writes a table identical to the uninterrupted one:
    the same tensors file bytes and the same JSON (ids, key, sha256, metadata)."""
    from distillkit_scd.teachers.aw_table import TABLE_JSON, TABLE_TENSORS

    recipe = _copy_without(reference, tmp_path, "aw")
    log = tmp_path / "killed.log"
    args = ["aw-table", str(recipe)]
    _kill_when(args, _log_has(log, "teacher: loading checkpoint "), "the student pass", log)
    aw = tmp_path / "run" / "aw"
    assert not aw.exists() or list(aw.iterdir()) == []

    _rerun(args)
    assert (aw / TABLE_TENSORS).read_bytes() == (reference / "aw" / TABLE_TENSORS).read_bytes()
    assert _json(aw / TABLE_JSON, tmp_path / "run", reference) == _json(reference / "aw" / TABLE_JSON, reference)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["td", "taid"])
def test_killed_distillation_resumes_to_the_same_weights_and_state(reference, tmp_path, method):
    """TD and TAID (SCD+AW: tests/test_end_to_end.py) killed after the first stage's checkpoint: the same
    command resumes from it and ends with every stage checkpoint bitwise equal to the uninterrupted
    run's, the same `distill_state.json` (active checkpoint and, for TAID, its t, momentum and previous
    loss: restored, not restarted) and the same schedule log and manifest. (The schedule log's
    `teacher_forward_rows` used to differ — 96 vs 192 — because that counter was not saved with the
    checkpoint; `distill_state.json` now carries it.)"""
    recipe = _copy_without(reference, tmp_path, f"distill/{method}")
    out = tmp_path / "run" / "distill" / method
    first = out / "checkpoint-6" / "distill_state.json"  # written after the trainer's own files
    args = ["distill", str(recipe), "--method", method]
    _kill_when(args, first.is_file, "the first stage's checkpoint", tmp_path / "killed.log")
    assert not (out / "manifest.json").exists() and not (out / "schedule_log.json").exists()
    saved_at = first.stat().st_mtime_ns

    _rerun(args)
    assert first.stat().st_mtime_ns == saved_at
    want = reference / "distill" / method
    _assert_same_weights(out, want)
    for ckpt in ("checkpoint-6", "checkpoint-12"):
        got_state = json.loads((out / ckpt / "distill_state.json").read_text())
        assert got_state == json.loads((want / ckpt / "distill_state.json").read_text()), ckpt
    if method == "taid":  # t moved during the first stage, so restarting it would show
        t0 = json.loads((want / "checkpoint-6" / "distill_state.json").read_text())["trainer"]["taid"]
        assert t0["t"] > 0.4
    for name in ("schedule_log.json", "manifest.json"):
        assert _json(out / name, tmp_path / "run", reference) == _json(want / name, reference), name


@pytest.mark.slow
def test_killed_evaluation_writes_nothing_and_rescoring_is_identical(reference, tmp_path):
    """Evaluation keeps no partial progress: killed after the first of two checkpoints was scored, it
    leaves no results file; the same command then writes a results JSON identical to the uninterrupted
    one (greedy decoding on CPU is deterministic; the file has no timing fields)."""
    from distillkit_scd.evaluation.results import load_results

    recipe = _copy_without(reference, tmp_path, "results")
    log = tmp_path / "killed.log"
    args = ["evaluate", str(recipe), "--row", "student_sft"]
    _kill_when(args, _log_has(log, "student_sft step-6: test"), "the first checkpoint's scores", log)
    results = tmp_path / "run" / "results"
    assert not results.exists() or not any(p.is_file() for p in results.rglob("*"))

    _rerun(args)
    got = results / "student_sft" / "synthetic.json"
    load_results(got)  # valid schema, metrics recomputable from the samples
    assert _json(got, tmp_path / "run", reference) == _json(reference / "results" / "student_sft" / "synthetic.json",
                                                 reference)


# -- a crash or a full disk during an artifact write ---------------------------------------------------


def _results(accuracy: float) -> dict:
    from distillkit_scd.evaluation.results import build_results

    samples = [{"id": str(i), "gold": "a", "generation": "a", "prediction": "a", "scores": {"accuracy": accuracy}}
               for i in range(2)]
    return build_results("synthetic", "td", {"definition": "", "sizes": {}}, {"path": "m"}, {"accuracy": accuracy},
                         samples, {"max_new_tokens": 4, "batch_size": 1, "decoding": "greedy"})


def _write_results(path: Path, version: int) -> None:
    from distillkit_scd.evaluation.results import write_results

    write_results(path, _results(float(version % 2)))


def _write_manifest(path: Path, version: int) -> None:
    from distillkit_scd.models.checkpoints import CheckpointEntry, write_manifest

    assert path.name == "manifest.json"
    write_manifest(path.parent, [CheckpointEntry(0, version, 1.0, f"checkpoint-{version}")], 0, "test")


def _write_json(path: Path, version: int) -> None:
    """What stage stamps, `distill_state.json`, the toy results, AW/signal metadata are written with."""
    from distillkit_scd.utils.atomic import atomic_write_json

    atomic_write_json(path, {"status": "done", "version": version})


def _write_text(path: Path, version: int) -> None:
    """What Table 1 (md/csv) and resolved recipes are written with."""
    from distillkit_scd.utils.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"table": version}))


WRITERS = {"results": _write_results, "manifest": _write_manifest, "json artifact": _write_json,
           "text artifact": _write_text}


def _fail_fsync(err: OSError):
    def fsync(fd):
        raise err

    return fsync


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("fault", ["rename fails", "disk full", "io error"])
def test_failed_write_leaves_the_previous_artifact(tmp_path, monkeypatch, writer, fault):
    """Every artifact writer, failing after the new bytes went to the temporary file (the rename raises,
    or the flush to disk reports ENOSPC or EIO): the previous file is byte-for-byte unchanged and still
    parses, no temporary file is left, and a full disk raises `DiskFullError` naming the file and saying
    the disk is full."""
    from distillkit_scd.utils import atomic

    write = WRITERS[writer]
    path = tmp_path / "out" / "manifest.json"
    write(path, 1)
    before = path.read_bytes()
    json.loads(before)
    if fault == "rename fails":
        def replace(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(atomic.os, "replace", replace)
        expected, match = OSError, rf"{path}: cannot write it"
    elif fault == "disk full":
        monkeypatch.setattr(atomic.os, "fsync", _fail_fsync(OSError(errno.ENOSPC, "No space left on device")))
        expected, match = atomic.DiskFullError, rf"{path}: disk full"
    else:
        monkeypatch.setattr(atomic.os, "fsync", _fail_fsync(OSError(errno.EIO, "Input/output error")))
        expected, match = OSError, rf"{path}: cannot write it \(Input/output error\)"
    with pytest.raises(expected, match=match) as info:
        write(path, 2)
    assert fault != "disk full" or info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json"]
    monkeypatch.undo()
    write(path, 2)  # and with the fault gone the same call replaces it
    assert path.read_bytes() != before


def test_serialisation_error_writes_nothing(tmp_path):
    """A value JSON cannot hold fails before the disk is touched: the old file stays, no temporary."""
    from distillkit_scd.utils.atomic import atomic_write_json

    path = tmp_path / "a.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1} and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_sigkill_mid_write_leaves_the_previous_artifact(tmp_path):
    """A process SIGKILLed while it is writing an artifact (half the new bytes on disk, blocked before the
    rename): the target still holds the previous version, whole and parseable. The kill leaves the
    half-written temporary file, hidden (`.NAME.PID.TID.tmp`), which no reader ever opens."""
    path = tmp_path / "results.json"
    old = json.dumps({"version": 1, "samples": list(range(1000))})
    path.write_text(old)
    child = f"""
import sys, time
from distillkit_scd.utils.atomic import atomic_write
new = b'{{"version": 2, "samples": [' + b", ".join(b"%d" % i for i in range(100000)) + b"]}}"
def write(tmp):
    with open(tmp, "wb") as fh:
        fh.write(new[: len(new) // 2])
        fh.flush()
        print("half written", flush=True)
        time.sleep(120)
        fh.write(new[len(new) // 2:])
atomic_write({str(path)!r}, write)
"""
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    assert line == b"half written\n", (line, proc.stderr.read())
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_text() == old and json.loads(path.read_text())["version"] == 1
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".results.json.") and leftovers[0].stat().st_size > 0


# -- unreadable checkpoints name the file ----------------------------------------------------------------


def _damage(folder: Path, how: str) -> Path:
    """Damage `folder/model.safetensors` in place: cut in half, cut inside its header, garbage, or gone."""
    file = folder / "model.safetensors"
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "header cut":
        file.write_bytes(data[:20])
    elif how == "garbage":
        file.write_bytes(b"not a safetensors file " * 50)
    else:
        file.unlink()
    return file


DAMAGE = ["truncated", "header cut", "garbage", "missing"]


@pytest.mark.parametrize("how", DAMAGE)
def test_load_model_names_the_unreadable_weights_file(tiny_pair, tmp_path, how):
    """`load_model` on a folder whose weights are truncated, garbage or missing raises ValueError naming
    the file (the folder when there is none), not a safetensors traceback."""
    from distillkit_scd.models.loading import load_model

    folder = tmp_path / "student"
    shutil.copytree(tiny_pair[1], folder)
    file = _damage(folder, how)
    named = folder if how == "missing" else file
    with pytest.raises(ValueError, match=rf"^{named}: .*safetensors"):
        load_model(str(folder))


@pytest.mark.parametrize("how", DAMAGE)
def test_teacher_pool_names_the_unreadable_checkpoint_and_keeps_the_live_teacher(tiny_pair, tmp_path, how):
    """Swapping a damaged checkpoint into the live teacher raises ValueError naming the file (the folder
    when it has no weights), and the teacher keeps the weights it had."""
    from distillkit_scd.models.checkpoints import CheckpointEntry, write_manifest
    from distillkit_scd.teachers.pool import CheckpointPool

    good, bad = tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"
    shutil.copytree(tiny_pair[0], good)
    shutil.copytree(tiny_pair[0], bad)
    file = _damage(bad, how)
    write_manifest(tmp_path, [CheckpointEntry(0, 1, 1.0, str(good)), CheckpointEntry(1, 2, 2.0, str(bad))], 0, "t")
    pool = CheckpointPool(tmp_path)
    teacher = pool.load_model(0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    named = bad if how == "missing" else file
    with pytest.raises(ValueError, match=rf"^{named}: "):
        pool.load_into(teacher, 1)
    assert pool.active_index == 0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize(("name", "how"), [("model.safetensors", "truncated"), ("model.safetensors", "missing"),
                                           ("optimizer.pt", "garbage"), ("scheduler.pt", "truncated")])
def test_resume_names_the_unreadable_checkpoint_file(tiny_pair, tmp_path, name, how):
    """The checkpoint a run would resume from, damaged: `check_resume_checkpoint` (called by the SFT and
    distillation stages before training) names the file and how to fall back to the one before."""
    from distillkit_scd.models.checkpoints import check_resume_checkpoint

    folder = tmp_path / "checkpoint-6"
    shutil.copytree(tiny_pair[1], folder)
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"last_epoch": 6}, folder / "scheduler.pt")
    check_resume_checkpoint(folder)  # intact: passes
    file = folder / name
    if name == "model.safetensors":
        _damage(folder, how)
    elif how == "garbage":
        file.write_bytes(b"\x00garbage" * 10)
    else:
        file.write_bytes(file.read_bytes()[:40])
    named = folder if how == "missing" else file
    with pytest.raises(ValueError, match=rf"^resume: {named}: .*delete {folder} to resume from the checkpoint before"):
        check_resume_checkpoint(folder)


@pytest.mark.slow
def test_sft_stage_refuses_a_damaged_resume_checkpoint_before_training(reference, tmp_path, capsys):
    """End to end: the student SFT command, finding its newest checkpoint's weights truncated, exits with
    code 2 and one line naming the file — before any training step."""
    from distillkit_scd.cli import main

    recipe = _copy_without(reference, tmp_path, "sft/student/manifest.json")
    file = _damage(tmp_path / "run" / "sft" / "student" / "checkpoint-12", "truncated")
    assert main(["sft", str(recipe), "--role", "student"]) == 2
    err = capsys.readouterr().err
    assert f"error: resume: {file}: cannot read safetensors" in err and "Traceback" not in err


def test_cli_reports_a_full_disk_in_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """A full disk during any stage's artifact write: exit code 1 and one stderr line naming the file."""
    from distillkit_scd import cli
    from distillkit_scd.utils import atomic

    target = tmp_path / "run" / "results.json"

    def dispatch(args):
        atomic.atomic_write_json(target, {"x": 1})
        return 0

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    monkeypatch.setattr(atomic.os, "fsync", _fail_fsync(OSError(errno.ENOSPC, "No space left on device")))
    assert cli.main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {target}: disk full"), err
    assert not target.exists()
