"""The stage table: every stage command the pipeline runs, defined once.

A row of `STAGES` says what a stage is: the function it calls, its CLI subcommand and option (with the
choices), how it is launched, whether it loads models, which stages it reads and what it writes. Its users:
the CLI builds the stage subcommands and their arguments from it, `pipeline.run.build_stages` the stage
names, needs, artifacts and outputs, `pipeline.run.run_stage_command` dispatches through it,
`config.launch.accelerate_command` decides each launch from it, and the fingerprints take the data's and models' identity for the stages that
load models. Adding a stage is adding a row (and its place in `build_stages`' order); tests/test_stage_table.py
fails when the table and a user disagree.

Functions are named as `module:function` strings and imported when the stage runs: the table sits low in
the layering (basics, beside the method table: `config.launch` and `config.schema` read it) and importing a stage module pulls in torch.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from distillkit_scd.config.methods import METHODS, ROWS, SFT_ROWS

Launch = Literal["training", "data_parallel", "single"]


@dataclass(frozen=True)
class StageOption:
    """The option of a stage command that picks what it works on; the pipeline has one stage per value.

    flag (`str`): the CLI option (`--role`); the value is passed to the stage function.
    choices (`tuple[str, ...]`): the values argparse accepts.
    help (`str`, *optional*): the option's CLI help.
    """

    flag: str
    choices: tuple[str, ...]
    help: str | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute the value lands in (`--role` → `role`)."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class StageSpec:
    """One stage command.

    command (`str`): the CLI subcommand (`distillkit-scd sft RECIPE --role teacher`), the same under
        `accelerate launch -m distillkit_scd`.
    name (`str`): the pipeline's stage name; `{}` is the option's value (`sft-{}` → `sft-teacher`).
    run (`str`): `module:function`, called as `function(recipe, value)`, `function(recipe)` without an option,
        or `function(run_dir)` when `on_run_dir`.
    help (`str`): the subcommand's CLI help.
    launch (`str`): `training`: the recipe's launcher (one process, DDP or DeepSpeed); `data_parallel`: a
        forward-only pass whose rows are sharded over one machine's processes (`utils/sharding.py`); `single`: one
        plain process.
    label (`str`): how the launch description names it.
    reads (`Callable[[str | None], tuple[str, ...]]`): the stages whose output it reads, given the option's
        value, as stage-name patterns (fnmatch); those the recipe has become the stage's needs.
    writes (`str`): the file or folder under OUT it writes (`{}` = the value, `{task}` = the task name),
        removed before a run with new inputs; empty when it is never removed.
    artifact (`str`): the file under OUT that proves it finished (same placeholders).
    option (`StageOption`, *optional*): the option and its choices; without one the stage is one stage.
    runs_model (`bool`, defaults to `True`): loads models on the task's data: `tiny:` models are prepared
        before it, and its fingerprint includes the data's and the models' identity.
    on_run_dir (`bool`, defaults to `False`): its command takes the run folder instead of the recipe.
    cli (`bool`, defaults to `True`): the CLI builds its subcommand from this row (the report's, which takes
        several run folders and options of its own, is written out in cli.py).
    """

    command: str
    name: str
    run: str
    help: str
    launch: Launch
    label: str
    reads: Callable[[str | None], tuple[str, ...]]
    writes: str
    artifact: str
    option: StageOption | None = None
    runs_model: bool = True
    on_run_dir: bool = False
    cli: bool = True

    def stage_name(self, value: str | None = None) -> str:
        """The pipeline's name of this stage for an option value (`sft-teacher`)."""
        return self.name.format(value)

    @property
    def pattern(self) -> str:
        """The fnmatch pattern of every stage of this row (`sft-*`), as `config.schema.FIELD_STAGES` writes them."""
        return self.name.format("*")

    def argv(self, value: str | None = None) -> tuple[str, ...]:
        """The stage command without its recipe: `("sft", "--role", "teacher")`."""
        return (self.command, self.option.flag, value) if self.option else (self.command,)

    def files(self, value: str | None, task: str) -> tuple[str, str]:
        """(artifact, writes) under OUT for an option value and the recipe's task."""
        return self.artifact.format(value, task=task), self.writes.format(value, task=task)

    def function(self) -> Callable:
        """The stage function (its module imported now)."""
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


def _evaluation_reads(row: str | None) -> tuple[str, ...]:
    """A Table 1 row scores the base models (zero-shot), an SFT's checkpoints, or a distillation's."""
    if row in SFT_ROWS:
        return (f"sft-{row.removesuffix('_sft')}",)
    return (f"distill-{row}",) if row in METHODS else ()


STAGES: dict[str, StageSpec] = {spec.command: spec for spec in (
    StageSpec(command="sft", name="sft-{}", run="distillkit_scd.training.sft:run_sft",
              help="stage: domain SFT of the teacher (N checkpoints) or the student",
              option=StageOption("--role", ("teacher", "student")), launch="training", label="SFT",
              reads=lambda role: (), writes="sft/{}", artifact="sft/{}/manifest.json"),
    StageSpec(command="signals", name="signals", run="distillkit_scd.teachers.signal_cache:run_signal_cache",
              help="stage: cache every teacher checkpoint's top-k signals over train",
              launch="single", label="signals",  # one teacher pass per checkpoint, by design
              reads=lambda _: ("sft-teacher",), writes="signals", artifact="signals/signals.json"),
    StageSpec(command="aw-table", name="aw-table", run="distillkit_scd.teachers.aw_table:run_aw_table",
              help="stage: per-sample AW table for every teacher checkpoint (RECIPE, or a DistillKit config: see "
                   "docs/distillkit.md)",
              launch="data_parallel", label="AW table",
              reads=lambda _: ("sft-teacher", "sft-student", "signals"),  # L_T from the signals when cached
              writes="aw", artifact="aw/aw_table.json"),
    StageSpec(command="distill", name="distill-{}", run="distillkit_scd.training.distill:run_distill",
              help="stage: distil the student with one method",
              option=StageOption("--method", tuple(METHODS)), launch="training", label="distillation",
              reads=lambda m: ("sft-teacher", "sft-student", *(("aw-table",) if METHODS[m].aw else ()), "signals"),
              writes="distill/{}", artifact="distill/{}/manifest.json"),
    StageSpec(command="evaluate", name="eval-{}", run="distillkit_scd.evaluation.stage:run_evaluation",
              help="stage: score one Table 1 row on the test split",
              option=StageOption("--row", tuple(ROWS)), launch="data_parallel", label="evaluation",
              reads=_evaluation_reads, writes="results/{}/{task}.json", artifact="results/{}/{task}.json"),
    StageSpec(command="report", name="report", run="distillkit_scd.reporting.report:write_report",
              help="Table 1 (Markdown, CSV) and figures from a run directory",
              launch="single", label="report", reads=lambda _: ("eval-*",), writes="", artifact="report/table1.md",
              runs_model=False, on_run_dir=True, cli=False),
)}
"""Stage commands in the order the CLI lists them; `pipeline.run.build_stages` sets the run order."""

MODEL_STAGES: tuple[str, ...] = tuple(spec.pattern for spec in STAGES.values() if spec.runs_model)
"""Patterns of the stages that run a model on the task's data (their fingerprints include its identity)."""


def stage_spec(command: str) -> StageSpec:
    """The row of a stage command; raises ValueError naming the stage commands there are."""
    if command not in STAGES:
        raise ValueError(f"stage command: expected one of {', '.join(STAGES)}, got {command!r}")
    return STAGES[command]


def needs(spec: StageSpec, value: str | None, earlier: list[str]) -> tuple[str, ...]:
    """The stages among `earlier` (names, in run order) that `spec`'s stage for `value` reads."""
    out: list[str] = []
    for pattern in spec.reads(value):
        out += [n for n in earlier if fnmatch.fnmatchcase(n, pattern) and n not in out]
    return tuple(out)
