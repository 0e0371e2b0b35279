"""The whole study on `synthetic` with tiny models: every row, results JSONs, Table 1, resume behaviour.

These run the real stages (no fakes) on a micro recipe, so they take tens of seconds; they are the
tests that show the pieces fit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MICRO = """
name: micro
output_dir: {out}
seed: 7
models: {{teacher: "tiny:teacher", student: "tiny:student"}}
task: {{name: synthetic, max_length: 64, options: {{num_train: 96, num_test: 24}}}}
optim: {{per_device_train_batch_size: 16, learning_rate: 3.0e-3, logging_steps: 2}}
sft: {{num_checkpoints: 2, teacher: {{num_train_epochs: 2}}, student: {{num_train_epochs: 2}}}}
distill: {{steps_per_stage: {T}, methods: {methods}, scd: {{probe_size: 16}}}}
evaluation: {{batch_size: 32, zero_shot: {zero_shot}}}
"""


def write_recipe(tmp_path: Path, methods="[td, taid, cd, scd, scd_aw]", T=3, zero_shot="true") -> Path:
    path = tmp_path / "micro.yaml"
    path.write_text(MICRO.format(out=tmp_path / "run", methods=methods, T=T, zero_shot=zero_shot))
    return path


@pytest.mark.slow
def test_all_rows_results_and_table_recomputable(tmp_path):
    """All nine rows produce results JSONs; each Table 1 cell equals the mean of its per-sample scores;
    a second run skips every stage; the SCD schedule log and Fig. 3/4/5 exist."""
    from distillkit_scd.pipeline.run import run_pipeline
    from distillkit_scd.reporting.report import collect

    recipe = write_recipe(tmp_path)
    first = run_pipeline(recipe, in_process=True)
    assert all(r.status == "done" for r in first), [vars(r) for r in first]
    run = tmp_path / "run"
    rows = sorted(p.parent.name for p in (run / "results").glob("*/synthetic.json"))
    assert rows == sorted(["teacher_zero_shot", "student_zero_shot", "teacher_sft", "student_sft", "td", "taid",
                           "cd", "scd", "scd_aw"])
    _, table, raw = collect([run])
    for key, data in raw.items():
        row = key.split("/")[0]
        scores = [s["scores"]["accuracy"] for s in data["samples"]]
        assert table[row]["synthetic"] == pytest.approx(sum(scores) / len(scores))
        assert data["metrics"]["accuracy"] == pytest.approx(sum(scores) / len(scores))
        protocols = data["selection"]["protocols"]
        assert data["selection"]["protocol"] == "clean" and protocols["clean"]["checkpoint"] == data["model"]["checkpoint"]
        assert protocols["paper"]["metrics"] == max((c["test"] for c in data["selection"]["candidates"]),
                                                    key=lambda m: m["accuracy"])
    manifest = json.loads((run / "sft" / "teacher" / "manifest.json").read_text())
    scores = [c["val_score"] for c in manifest["checkpoints"]]
    assert all(isinstance(c["val_loss"], float) for c in manifest["checkpoints"])
    assert all(isinstance(v, float) for v in scores) and manifest["best_index"] == scores.index(max(scores))
    stored = json.loads((run / "sft" / "teacher" / "selection_scores.json").read_text())["scores"]
    candidates = raw["teacher_sft/synthetic"]["selection"]["candidates"]  # reused, not generated again
    assert [c["validation"] for c in candidates] == [stored[c["path"]]["metrics"] for c in candidates]
    teacher_sft = raw["teacher_sft/synthetic"]["model"]["checkpoint"]  # the Teacher SFT row is p(best)
    assert teacher_sft == f"step-{manifest['checkpoints'][manifest['best_index']]['step']}"
    md = (run / "report" / "table1.md").read_text()
    assert "SCD w/ AW" in md and "The paper's Table 1" in md
    for fig in ("fig3_scd.png", "fig3_scd_aw.png", "fig4_aw.png", "fig5_synthetic.png"):
        assert (run / "report" / fig).stat().st_size > 1000
    log = json.loads((run / "distill" / "scd" / "schedule_log.json").read_text())
    assert [s["stage"] for s in log["stages"]] == [0, 1]
    for stage in log["stages"]:
        totals = [t["kl_best"] + t["kl_student"] for t in stage["terms"]]
        assert stage["chosen"] == min(range(len(totals)), key=lambda j: (totals[j], j))

    started = time.time()
    second = run_pipeline(recipe, in_process=True)
    assert [r.status for r in second if r.stage != "report"] == ["skipped"] * (len(second) - 1)
    assert time.time() - started < 30


def _final_state(folder: Path):
    from safetensors.torch import load_file

    ckpts = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return load_file(str(ckpts[-1] / "model.safetensors"))


@pytest.mark.slow
def test_killed_distillation_resumes_to_the_same_weights(tmp_path):
    """SIGKILL during an SCD+AW run, then the same command again: same final weights and schedule log
    as an uninterrupted run (CPU, deterministic)."""
    import torch

    from distillkit_scd.config import load_recipe
    from distillkit_scd.teachers.aw_table import run_aw_table
    from distillkit_scd.training.distill import run_distill
    from distillkit_scd.training.sft import run_sft

    recipe_path = write_recipe(tmp_path, methods="[scd_aw]", T=6, zero_shot="false")
    recipe = load_recipe(recipe_path)
    run_sft(recipe, "teacher")
    run_sft(recipe, "student")
    run_aw_table(recipe)
    reference = run_distill(recipe, "scd_aw")
    want_weights = _final_state(reference)
    want_log = json.loads((reference / "schedule_log.json").read_text())
    os.rename(reference, reference.with_name("reference"))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "distillkit_scd", "distill", str(recipe_path), "--method", "scd_aw"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_stage = reference / "checkpoint-6" / "distill_state.json"
    deadline = time.time() + 120
    while not first_stage.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; lengthen it"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (reference / "schedule_log.json").exists()

    assert subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    got_weights = _final_state(reference)
    assert want_weights.keys() == got_weights.keys()
    for name in want_weights:
        torch.testing.assert_close(got_weights[name], want_weights[name], rtol=0, atol=0, msg=name)
    got_log = json.loads((reference / "schedule_log.json").read_text())
    assert got_log["stages"] == want_log["stages"]
