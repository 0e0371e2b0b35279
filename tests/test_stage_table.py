"""The stage table (`stages.STAGES`) and its users agree: the CLI's stage subcommands and their choices,
the stages `build_stages` yields for every method set, the stages `config_schema.FIELD_STAGES` names, the
run folders the stage code writes, the dispatcher's functions and the launcher's decisions all come from
(or match) the rows."""

import dataclasses
import fnmatch
import inspect
import itertools
import sys
from pathlib import Path

import pytest

from distillkit_scd.cli import build_parser
from distillkit_scd.config import launch, recipe_from_dict
from distillkit_scd.config.methods import METHODS
from distillkit_scd.config.schema import FIELD_STAGES
from distillkit_scd.config.stages import MODEL_STAGES, STAGES, needs
from distillkit_scd.pipeline.run import build_stages, launch_command

BASE = {"name": "t", "output_dir": "/tmp/stage-table", "task": {"name": "synthetic"},
        "models": {"teacher": "tiny:teacher", "student": "tiny:student"}}


def _recipe(methods=tuple(METHODS), zero_shot=True, signal="online", launcher=None):
    return recipe_from_dict({**BASE, "distill": {"methods": list(methods), "teacher_signal": signal},
                             "evaluation": {"zero_shot": zero_shot}, "launcher": launcher or {}})


def _every_recipe():
    """No method, each method alone, all of them (reversed) × zero-shot on/off × online/cached teacher signal."""
    for methods in [(), *[(m,) for m in METHODS], tuple(reversed(METHODS))]:
        for zero_shot, signal in itertools.product((True, False), ("online", "cached")):
            yield _recipe(methods, zero_shot, signal)


def _all_stage_names() -> set[str]:
    """Every stage name the table can make (each row × each of its option's values)."""
    return {s.stage_name(v) for s in STAGES.values() for v in (s.option.choices if s.option else (None,))}


def test_every_cli_stage_row_is_a_subcommand_with_its_option_and_choices():
    """Each row with `cli=True` is a subcommand taking RECIPE, --set and exactly its option (required, with
    the row's choices); every choice parses, anything else is refused."""
    sub = build_parser(with_toy=False)._subparsers._group_actions[0].choices
    for spec in STAGES.values():
        assert spec.command in sub, spec.command
        if not spec.cli:
            continue
        actions = {a.dest: a for a in sub[spec.command]._actions}
        assert set(actions) == {"help", "recipe", "overrides"} | ({spec.option.dest} if spec.option else set())
        assert sub[spec.command].description is None and spec.help
        if spec.option is None:
            assert build_parser(with_toy=False).parse_args([spec.command, "r.yaml"]).command == spec.command
            continue
        opt = actions[spec.option.dest]
        assert opt.required and tuple(opt.choices) == spec.option.choices and opt.option_strings == [spec.option.flag]
        for value in spec.option.choices:
            args = build_parser(with_toy=False).parse_args([spec.command, "r.yaml", spec.option.flag, value])
            assert getattr(args, spec.option.dest) == value
        with pytest.raises(SystemExit):
            build_parser(with_toy=False).parse_args([spec.command, "r.yaml", spec.option.flag, "nope"])


def test_every_built_stage_comes_from_its_row():
    """For every method set and switch, each stage `build_stages` yields is its row's stage: name, command,
    artifact and output from the row, needs = the row's reads among the earlier stages, and the option's
    value one of its choices; the report reads every evaluation."""
    for recipe in _every_recipe():
        stages = build_stages(recipe)
        names = [s.name for s in stages]
        assert len(set(names)) == len(names)
        for i, stage in enumerate(stages):
            spec = stage.spec
            value = stage.command[2] if spec.option else None
            assert stage.command == spec.argv(value) and (value is None or value in spec.option.choices)
            assert stage.name == spec.stage_name(value)
            assert (stage.artifact, stage.output) == spec.files(value, recipe.task.name)
            assert stage.needs == needs(spec, value, names[:i])
            assert set(stage.needs) <= set(names[:i])
        assert stages[-1].needs == tuple(n for n in names if n.startswith("eval-"))


def test_reads_name_stages_the_table_can_make():
    """Every `reads` pattern of every row and value matches a stage the table can make (a typo would
    silently drop a dependency)."""
    possible = _all_stage_names()
    for spec in STAGES.values():
        for value in spec.option.choices if spec.option else (None,):
            for pattern in spec.reads(value):
                assert fnmatch.filter(possible, pattern), (spec.command, value, pattern)


def test_field_stages_name_stages_of_the_table():
    """Every stage pattern in `config_schema.FIELD_STAGES` (callables evaluated on several recipes) matches
    a stage the table can make; the model stages are exactly the rows that run a model."""
    possible = _all_stage_names()
    recipes = [_recipe(), recipe_from_dict({**BASE, "sft": {"select_by": "val_score"}})]
    for field, patterns in FIELD_STAGES.items():
        for pats in ([patterns(r) for r in recipes] if callable(patterns) else [patterns]):
            for pattern in pats:
                assert fnmatch.filter(possible, pattern), (field, pattern)
    assert set(MODEL_STAGES) == {s.pattern for s in STAGES.values() if s.runs_model}
    assert not any(fnmatch.fnmatchcase("report", p) for p in MODEL_STAGES)


def test_rows_run_functions_that_exist_with_the_right_arguments():
    """Each row's `run` names an importable function taking (recipe, value), (recipe) or (run_dir), as the
    dispatcher will call it."""
    for spec in STAGES.values():
        function = spec.function()
        params = [p for p in inspect.signature(function).parameters.values() if p.default is inspect.Parameter.empty]
        assert len(params) == (2 if spec.option else 1), spec.run


def test_writes_are_where_the_stage_code_writes(tmp_path):
    """The row's output folders are the run-folder layout the stage code uses (`workspace.Workspace`)."""
    from distillkit_scd.pipeline.workspace import Workspace

    recipe = recipe_from_dict({**BASE, "output_dir": str(tmp_path)})
    ws = Workspace(recipe)
    task = recipe.task.name
    assert ws.sft_dir("teacher") == tmp_path / STAGES["sft"].files("teacher", task)[1]
    assert ws.distill_dir("scd") == tmp_path / STAGES["distill"].files("scd", task)[1]
    assert ws.aw_dir() == tmp_path / STAGES["aw-table"].writes
    assert ws.results_path("td") == tmp_path / STAGES["evaluate"].files("td", task)[1]


def test_launch_decision_comes_from_the_row(monkeypatch):
    """On a 2-process DDP recipe: training rows get the recipe's launch, data-parallel rows 2 sharded
    processes, single rows one plain process; flipping a row's `launch` flips the command, and the
    pipeline's command is the launcher's prefix + the stage command."""
    ddp = _recipe(launcher={"num_processes": 2, "mixed_precision": "bf16"})
    for spec in STAGES.values():
        cmd = launch.accelerate_command(ddp, spec.command, port=1234)
        if spec.launch == "single":
            assert cmd == [sys.executable], spec.command
        else:
            assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
            assert ("--mixed_precision" in cmd) == (spec.launch == "training")
    monkeypatch.setitem(STAGES, "signals", dataclasses.replace(STAGES["signals"], launch="data_parallel"))
    assert "--multi_gpu" in launch.accelerate_command(ddp, "signals", port=1234)
    monkeypatch.setitem(STAGES, "evaluate", dataclasses.replace(STAGES["evaluate"], launch="single"))
    assert launch.accelerate_command(ddp, "evaluate") == [sys.executable]
    for stage in build_stages(ddp):
        cmd = launch_command(ddp, stage, Path("r.yaml"))
        tail = cmd[cmd.index("-m", 1 if stage.spec.launch == "single" else 3):]
        target = str(ddp.output_dir) if stage.spec.on_run_dir else "r.yaml"
        assert tail == ["-m", "distillkit_scd", stage.command[0], target, *stage.command[1:]]
    with pytest.raises(ValueError, match="stage command"):
        launch.accelerate_command(ddp, "train")
