"""The command line: exit codes, one-line errors for bad recipes, stage commands reach their functions."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distillkit_scd import cli

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"name": "t", "output_dir": "runs/t", "task": {"name": "synthetic"},
        "models": {"teacher": "tiny:teacher", "student": "tiny:student"}}


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_validate_prints_resolved_recipe(tmp_path, capsys):
    """`validate` exits 0 and prints the resolved recipe (defaults filled, overrides applied)."""
    code = cli.main(["validate", str(write(tmp_path, GOOD)), "--set", "distill.alpha=0.25"])
    out, err = capsys.readouterr()
    assert code == 0
    resolved = yaml.safe_load(out)
    assert resolved["distill"]["alpha"] == 0.25 and resolved["optim"]["adam_beta2"] == 0.95
    assert "valid" in err


@pytest.mark.parametrize("data, overrides, needle", [
    ({**GOOD, "distill": {"alpah": 1}}, [], "unknown key distill.alpah"),
    (GOOD, ["distill.alpha=7"], "distill.alpha: expected a number in [0, 1], got 7"),
    ({**GOOD, "launcher": {"deepspeed_config": "./missing.json"}}, [], "launcher.deepspeed_config"),
])
def test_validate_bad_recipe_exits_2_with_one_line(tmp_path, capsys, data, overrides, needle):
    """A bad recipe: exit code 2, a single stderr line naming file and field, no traceback."""
    path = write(tmp_path, data)
    code = cli.main(["validate", str(path), *[a for o in overrides for a in ("--set", o)]])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in err
    if not overrides:
        assert str(path) in lines[0]


def test_missing_recipe_file(tmp_path, capsys):
    """A recipe path that does not exist is a clear error, exit 2."""
    assert cli.main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_stage_commands_call_stage_functions(tmp_path, monkeypatch):
    """`sft/aw-table/distill/evaluate RECIPE …` load the recipe (with --set) and call the stage function
    with the role, method or row."""
    import distillkit_scd.pipeline.run as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_stage_command",
                        lambda recipe, command: calls.append((recipe.distill.alpha, list(command))) or "x")
    path = str(write(tmp_path, GOOD))
    assert cli.main(["sft", path, "--role", "teacher"]) == 0
    assert cli.main(["aw-table", path]) == 0
    assert cli.main(["distill", path, "--method", "scd_aw", "--set", "distill.alpha=0.1"]) == 0
    assert cli.main(["evaluate", path, "--row", "student_sft"]) == 0
    assert calls == [(0.5, ["sft", "--role", "teacher"]), (0.5, ["aw-table"]),
                     (0.1, ["distill", "--method", "scd_aw"]), (0.5, ["evaluate", "--row", "student_sft"])]


def test_stage_command_dispatch_reaches_each_module(monkeypatch, tmp_path):
    """`run_stage_command` maps each stage command onto the contract function with the right argument."""
    import distillkit_scd.evaluation.stage
    import distillkit_scd.teachers.aw_table
    import distillkit_scd.training.distill
    import distillkit_scd.training.sft
    from distillkit_scd.config import recipe_from_dict
    from distillkit_scd.pipeline.run import run_stage_command

    seen = []
    monkeypatch.setattr(distillkit_scd.training.sft, "run_sft", lambda r, role: seen.append(("sft", role)))
    monkeypatch.setattr(distillkit_scd.teachers.aw_table, "run_aw_table", lambda r: seen.append(("aw",)))
    monkeypatch.setattr(distillkit_scd.training.distill, "run_distill", lambda r, m: seen.append(("distill", m)))
    monkeypatch.setattr(distillkit_scd.evaluation.stage, "run_evaluation", lambda r, row: seen.append(("eval", row)))
    r = recipe_from_dict({**GOOD, "output_dir": str(tmp_path)})
    for cmd in (["sft", "--role", "student"], ["aw-table"], ["distill", "--method", "td"], ["evaluate", "--row", "td"]):
        run_stage_command(r, cmd)
    assert seen == [("sft", "student"), ("aw",), ("distill", "td"), ("eval", "td")]
    with pytest.raises(ValueError, match="stage command"):
        run_stage_command(r, ["train"])


def test_run_failure_exits_1_and_names_stage(tmp_path, monkeypatch, capsys):
    """`run` turns a failed stage into exit code 1 and one line naming it."""
    import distillkit_scd.pipeline.run as pipeline

    real = pipeline.run_pipeline
    monkeypatch.setattr(pipeline, "run_pipeline",
                        lambda *a, **k: real(*a, **k, runner=lambda stage, cmd: int(stage.name == "sft-student")))
    path = write(tmp_path, {**GOOD, "output_dir": str(tmp_path / "out")})
    assert cli.main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "stage sft-student failed" in err and "Traceback" not in err


def test_run_dry_run_and_unknown_stage(tmp_path, capsys):
    """`run --dry-run` lists commands and writes nothing; an unknown `--only` stage exits 2."""
    path = write(tmp_path, {**GOOD, "output_dir": str(tmp_path / "out")})
    assert cli.main(["run", str(path), "--dry-run", "--only", "sft-teacher,eval-teacher_sft"]) == 0
    out = capsys.readouterr().out
    assert "sft-teacher: " in out and "-m distillkit_scd sft" in out
    assert not (tmp_path / "out").exists()
    assert cli.main(["run", str(path), "--only", "bogus"]) == 2
    assert "not a stage of this recipe" in capsys.readouterr().err


def test_quickstart_recipe_is_package_data():
    """The embedded quickstart recipe ships inside the package and is what recipes/quickstart.yaml extends."""
    from distillkit_scd.config import load_recipe

    path = cli.quickstart_recipe_path()
    assert path.is_file() and path.parent.parent.name == "distillkit_scd"
    assert load_recipe(path).to_dict() == load_recipe(ROOT / "recipes" / "quickstart.yaml").to_dict()


def test_help_is_fast_and_needs_no_stage_modules():
    """`python -m distillkit_scd --help` works in a fresh interpreter without importing torch or TRL."""
    code = ("import sys; from distillkit_scd import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'trl', 'transformers', 'distillkit_scd.training.sft') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "quickstart" in out.stdout


@pytest.mark.parametrize("command, overrides, needle", [
    (["validate", "{recipe}"], ["distill.methods=[foo]"], "--set distill.methods=[foo]: distill.methods[0]: expected one of"),
    (["validate", "{recipe}"], ["distill.bogus=1"], "--set distill.bogus=1: unknown key distill.bogus"),
    (["validate", "{recipe}"], ["distill.alpha=0.2", "distill.alpha=7"], "--set distill.alpha=7: distill.alpha:"),
    (["quickstart", "--dry-run"], ["distill.alpha=3"], "--set distill.alpha=3: distill.alpha: expected a number"),
])
def test_set_errors_name_the_set_not_the_recipe_file(tmp_path, capsys, command, overrides, needle):
    """A field written by `--set KEY=VALUE` is blamed on that `--set` (the last one for the key), not on the
    recipe file, nor, for `quickstart`, on the recipe inside the installed package."""
    recipe = write(tmp_path, GOOD)
    argv = [a.format(recipe=recipe) for a in command] + [a for o in overrides for a in ("--set", o)]
    assert cli.main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and needle in line, line
    assert str(recipe) not in line and "quickstart.yaml" not in line


def test_recipe_file_errors_still_name_the_file_when_other_fields_are_set(tmp_path, capsys):
    """An error in a field no `--set` touched names the recipe file."""
    recipe = write(tmp_path, {**GOOD, "distill": {"alpha": 5}})
    assert cli.main(["validate", str(recipe), "--set", "distill.temperature=2"]) == 2
    assert f"error: {recipe}: distill.alpha" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["file", "under a file", "not writable"])
def test_validate_refuses_an_output_dir_that_cannot_be_a_folder(tmp_path, capsys, monkeypatch, where):
    """`validate --set output_dir=…` (and `run`, which checks the same) exits 2 with one line naming the
    path: a file, a path below a file, or a folder this user cannot write (faked: tests run as root)."""
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    target = {"file": afile, "under a file": afile / "run", "not writable": tmp_path / "ro" / "run"}[where]
    if where == "not writable":
        (tmp_path / "ro").mkdir()
        real_access = os.access
        monkeypatch.setattr("os.access", lambda p, mode: Path(p) != tmp_path / "ro" and real_access(p, mode))
    recipe = write(tmp_path, GOOD)
    assert cli.main(["validate", str(recipe), "--set", f"output_dir={target}"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: --set output_dir={target}: output_dir: {str(target)!r}"), line
    assert {"file": "is a file", "under a file": f"{afile} is a file", "not writable": "not writable"}[where] in line
    if where == "file":
        assert cli.main(["run", str(recipe), "--set", f"output_dir={target}", "--dry-run"]) == 2
        assert "is a file" in capsys.readouterr().err


def test_report_on_a_missing_directory_says_it_is_missing(tmp_path, capsys):
    """`report` on a path that does not exist names it as missing (not 'no results files'); exit 2."""
    assert cli.main(["report", str(tmp_path / "runs" / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'runs' / 'nope'}: no such run directory"
    assert not (tmp_path / "runs").exists()  # nothing created on the way
