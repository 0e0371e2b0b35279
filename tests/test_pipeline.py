"""Pipeline bookkeeping with fake stages: skip what is up to date, re-run exactly what changed, stop
at a failure naming it. The stage runner is replaced, so these tests take milliseconds."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from distillkit_scd.config import METHODS
from distillkit_scd.pipeline.run import (
    StageFailed,
    build_stages,
    fingerprints,
    format_summary,
    run_pipeline,
)


@pytest.fixture
def recipe_path(tmp_path):
    data = {"name": "t", "output_dir": str(tmp_path / "out"),
            "models": {"teacher": "tiny:teacher", "student": "tiny:student"}, "task": {"name": "synthetic"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class FakeRunner:
    """Records the stages it was asked to run and writes their artifact; fails the ones in `fail`."""

    def __init__(self, fail=()):
        self.ran: list[str] = []
        self.fail = set(fail)

    def __call__(self, stage, cmd):
        self.ran.append(stage.name)
        if stage.name in self.fail:
            return 3
        out = Path(yaml.safe_load(Path(cmd[cmd.index("-m") + 3]).read_text())["output_dir"]) \
            if stage.name != "report" else Path(cmd[-1])
        (out / stage.artifact).parent.mkdir(parents=True, exist_ok=True)
        (out / stage.artifact).write_text("{}")
        return 0


ALL = ["eval-teacher_zero_shot", "eval-student_zero_shot", "sft-teacher", "sft-student", "eval-teacher_sft",
       "eval-student_sft", "aw-table", *[x for m in METHODS for x in (f"distill-{m}", f"eval-{m}")], "report"]


def test_stage_order_and_dependencies(recipe_path):
    """Zero-shot evals, SFTs, their evals, AW table, distill+eval per method in paper order, report."""
    from distillkit_scd.config import load_recipe

    stages = build_stages(load_recipe(recipe_path))
    assert [s.name for s in stages] == ALL
    by = {s.name: s for s in stages}
    assert by["distill-scd_aw"].needs == ("sft-teacher", "sft-student", "aw-table")
    assert by["distill-td"].needs == ("sft-teacher", "sft-student")
    no_aw = build_stages(load_recipe(recipe_path, ["distill.methods=[scd, td]", "evaluation.zero_shot=false"]))
    assert [s.name for s in no_aw][:2] == ["sft-teacher", "sft-student"]
    assert "aw-table" not in [s.name for s in no_aw]
    assert [s.name for s in no_aw if s.name.startswith("distill")] == ["distill-td", "distill-scd"]
    cached = {s.name: s for s in build_stages(load_recipe(recipe_path, ["distill.teacher_signal=cached"]))}
    assert cached["signals"].needs == ("sft-teacher",) and cached["signals"].output == "signals"
    assert all("signals" in cached[f"distill-{m}"].needs for m in METHODS)


def test_second_run_skips_everything(recipe_path, tmp_path):
    """After a full run, the same recipe runs nothing; stamps and summary.json record the statuses."""
    first = FakeRunner()
    results = run_pipeline(recipe_path, runner=first)
    assert first.ran == ALL and all(r.status == "done" for r in results)
    out = tmp_path / "out"
    stamp = json.loads((out / "stages" / "sft-teacher.json").read_text())
    assert stamp["status"] == "done" and len(stamp["fingerprint"]) == 64
    assert (out / "resolved_recipe.yaml").is_file()
    second = FakeRunner()
    results = run_pipeline(recipe_path, runner=second)
    assert second.ran == []
    assert {r.status for r in results} == {"skipped"}
    summary = json.loads((out / "stages" / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["skipped"] * len(ALL)
    assert "total" in format_summary(results)


@pytest.mark.parametrize("override, expected", [
    # distillation hyper-parameter: every distill stage, its eval, the report
    ("distill.alpha=0.3", [x for m in METHODS for x in (f"distill-{m}", f"eval-{m}")] + ["report"]),
    # a TAID-only setting touches TAID only
    ("distill.taid.t_start=0.3", ["distill-taid", "eval-taid", "report"]),
    # SCD's probe set: SCD and SCD+AW
    ("distill.scd.probe_size=32", ["distill-scd", "eval-scd", "distill-scd_aw", "eval-scd_aw", "report"]),
    # the student's SFT: its eval, the AW table, every distillation
    ("sft.student.num_train_epochs=2", ["sft-student", "eval-student_sft", "aw-table",
                                        *[x for m in METHODS for x in (f"distill-{m}", f"eval-{m}")], "report"]),
    # generation budget: p(best) is chosen by generation (sft.select_by: val_score), so every stage
    ("evaluation.max_new_tokens=4", ALL),
])
def test_changed_field_reruns_only_dependants(recipe_path, override, expected):
    """A changed recipe field re-runs the stages that read it and everything downstream, nothing else."""
    run_pipeline(recipe_path, runner=FakeRunner())
    again = FakeRunner()
    results = run_pipeline(recipe_path, [override], runner=again)
    assert again.ran == expected
    reasons = {r.stage: r.reason for r in results if r.status == "done"}
    field = override.split("=")[0]
    assert any(field in reason for reason in reasons.values()), reasons


def test_adding_a_method_runs_only_that_method(recipe_path):
    """`distill.methods` itself is not an input of a method's stage: adding one leaves the others."""
    run_pipeline(recipe_path, ["distill.methods=[td]"], runner=FakeRunner())
    again = FakeRunner()
    run_pipeline(recipe_path, ["distill.methods=[td, cd]"], runner=again)
    assert again.ran == ["distill-cd", "eval-cd", "report"]


def test_failure_names_stage_and_keeps_earlier_stamps(recipe_path, tmp_path):
    """A failing stage stops the run with its name; finished stages keep their stamps; a re-run starts at
    the failed stage."""
    failing = FakeRunner(fail={"sft-student"})
    with pytest.raises(StageFailed, match="stage sft-student failed \\(exit code 3\\)"):
        run_pipeline(recipe_path, runner=failing)
    stamps = tmp_path / "out" / "stages"
    assert failing.ran == ALL[:4]
    assert all(json.loads((stamps / f"{n}.json").read_text())["status"] == "done" for n in ALL[:3])
    assert json.loads((stamps / "sft-student.json").read_text())["status"] == "failed"
    summary = json.loads((stamps / "summary.json").read_text())["stages"]
    assert [s["status"] for s in summary[:5]] == ["done", "done", "done", "failed", "pending"]
    resumed = FakeRunner()
    results = run_pipeline(recipe_path, runner=resumed)
    assert resumed.ran == ALL[3:]
    assert results[3].reason == "resuming an attempt that ended failed"


def test_only_and_from_force_stages(recipe_path):
    """`only` runs just the named stages even when up to date; `start` runs that stage and the rest."""
    run_pipeline(recipe_path, runner=FakeRunner())
    only = FakeRunner()
    run_pipeline(recipe_path, only=["distill-td", "eval-td"], runner=only)
    assert only.ran == ["distill-td", "eval-td"]
    start = FakeRunner()
    run_pipeline(recipe_path, start="distill-scd", runner=start)
    assert start.ran == ["distill-scd", "eval-scd", "distill-scd_aw", "eval-scd_aw", "report"]
    with pytest.raises(ValueError, match="stage 'distill-xx': not a stage of this recipe"):
        run_pipeline(recipe_path, only=["distill-xx"], runner=FakeRunner())


def test_dry_run_runs_and_writes_nothing(recipe_path, tmp_path):
    """A dry run reports each stage with its command and creates no run directory."""
    runner = FakeRunner()
    results = run_pipeline(recipe_path, dry_run=True, runner=runner)
    assert runner.ran == [] and not (tmp_path / "out").exists()
    assert {r.status for r in results} == {"would run"}
    assert "-m distillkit_scd sft" in next(r.command for r in results if r.stage == "sft-teacher")


def test_fingerprint_depends_on_upstream_not_unrelated(recipe_path):
    """Fingerprints are deterministic; the teacher's SFT does not depend on the student's epochs."""
    from distillkit_scd.config import load_recipe

    a = load_recipe(recipe_path)
    b = load_recipe(recipe_path, ["sft.student.num_train_epochs=9"])
    fa, fb = fingerprints(a, build_stages(a)), fingerprints(b, build_stages(b))
    assert fa == fingerprints(a, build_stages(a))
    assert fa["sft-teacher"] == fb["sft-teacher"] and fa["eval-teacher_sft"] == fb["eval-teacher_sft"]
    assert fa["sft-student"] != fb["sft-student"] and fa["distill-td"] != fb["distill-td"]


def test_missing_artifact_reruns_stage(recipe_path, tmp_path):
    """A matching stamp whose artifact was deleted does not count: that stage runs again (and only it,
    since its fingerprint, hence its dependants', is unchanged)."""
    run_pipeline(recipe_path, runner=FakeRunner())
    (tmp_path / "out" / "aw" / "aw_table.json").unlink()
    again = FakeRunner()
    results = run_pipeline(recipe_path, runner=again)
    assert again.ran == ["aw-table"]
    assert next(r.reason for r in results if r.stage == "aw-table") == "aw/aw_table.json missing"


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_in_process(tmp_path):
    """Real stages on tiny models: a run produces results and the report; a second run skips every stage;
    dropping a method re-runs only the report (its inputs, the evaluations, changed)."""
    from distillkit_scd.cli import quickstart_recipe_path

    overrides = [f"output_dir={tmp_path / 'run'}", "task.options={num_train: 96, num_test: 16}",
                 "sft.num_checkpoints=2", "sft.teacher.num_train_epochs=1", "sft.student.num_train_epochs=1",
                 "distill.steps_per_stage=2", "distill.methods=[td, scd_aw]", "evaluation.zero_shot=false",
                 "distill.scd.probe_size=8"]
    first = run_pipeline(quickstart_recipe_path(), overrides, in_process=True)
    assert all(r.status == "done" for r in first)
    assert (tmp_path / "run" / "results" / "scd_aw" / "synthetic.json").is_file()
    assert (tmp_path / "run" / "report" / "table1.md").is_file()
    second = run_pipeline(quickstart_recipe_path(), overrides, in_process=True)
    assert {r.status for r in second} == {"skipped"}
    third = run_pipeline(quickstart_recipe_path(), overrides + ["distill.methods=[td]"], in_process=True)
    assert [r.stage for r in third if r.status == "done"] == ["report"]  # fewer rows: only the table changes


@pytest.mark.slow  # two fresh interpreters importing transformers: ~15 s on 2 cores
def test_tiny_models_built_once_under_concurrent_ranks(tmp_path):
    """Two processes resolving `tiny:` references at once (what the ranks of `accelerate launch` do) both
    succeed and agree on the folders: a file lock lets only one build them."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    data = {"name": "t", "output_dir": str(tmp_path), "task": {"name": "synthetic"},
            "models": {"teacher": "tiny:teacher", "student": "tiny:student"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    code = ("import sys; from distillkit_scd.config import load_recipe; "
            "from distillkit_scd.models.refs import resolve_model_path as r; "
            "rec = load_recipe(sys.argv[1]); print(r(rec, 'teacher'), r(rec, 'student'))")
    env = {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r.yaml")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert outs[0][0].splitlines()[-1] == outs[1][0].splitlines()[-1]  # (other libraries may print first)
    assert (tmp_path / "tiny_models" / "teacher" / "config.json").is_file()


def test_changed_inputs_clear_stage_output_but_interrupted_attempt_keeps_it(recipe_path, tmp_path):
    """A stage re-run with new inputs starts from an empty output folder (never resumes from checkpoints
    of other settings); a stage re-run after an interrupted attempt with the same inputs keeps its files
    so it can resume; a forced stage starts clean."""
    out = tmp_path / "out"
    run_pipeline(recipe_path, runner=FakeRunner())
    old = out / "distill" / "td" / "checkpoint-9"
    old.mkdir(parents=True)
    seen = {}

    def runner(stage, cmd):
        seen[stage.name] = (out / "distill" / "td" / "checkpoint-9").exists()
        return FakeRunner()(stage, cmd)

    run_pipeline(recipe_path, ["distill.alpha=0.2"], runner=runner)
    assert seen["distill-td"] is False
    # interrupted attempt with the current inputs: its partial files survive the re-run
    old.mkdir(parents=True)
    stamp = out / "stages" / "distill-td.json"
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "status": "running"}))
    seen.clear()
    run_pipeline(recipe_path, ["distill.alpha=0.2"], runner=runner)
    assert seen == {"distill-td": True}  # eval-td is up to date: its inputs did not change
    seen.clear()
    run_pipeline(recipe_path, ["distill.alpha=0.2"], only=["distill-td"], runner=runner)
    assert seen == {"distill-td": False}


def test_generation_budget_reruns_only_evaluations_under_val_loss(recipe_path):
    """With p(best) by loss (`sft.select_by: val_loss`) no training stage reads the generation budget."""
    base = ["sft.select_by=val_loss"]
    run_pipeline(recipe_path, base, runner=FakeRunner())
    again = FakeRunner()
    run_pipeline(recipe_path, [*base, "evaluation.max_new_tokens=4"], runner=again)
    assert again.ran == [s for s in ALL if s.startswith("eval-")] + ["report"]
