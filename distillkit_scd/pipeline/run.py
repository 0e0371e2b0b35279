"""`distillkit-scd run RECIPE`: the whole study for one task, as resumable stages.

Stages, in order (`build_stages`): zero-shot evaluations (if `evaluation.zero_shot`), SFT of teacher and
student, their evaluations, the signal cache (if cached), the AW table (if a method uses AW), distillation
+ evaluation per method, the report. What each stage is (its command and function, launch, needs,
artifact and output) is its row in the stage table, `stages.STAGES`.

Each stage has a fingerprint (`pipeline/fingerprints.py`): sha256 of its name, the recipe fields that affect it
(`Stage.inputs`, derived from `config.schema.FIELD_STAGES`), the data's content hash and the models'
identity, and the fingerprints of the stages it depends on. After a stage succeeds,
`OUT/stages/<stage>.json` (written atomically) records that fingerprint; a stage whose stamp matches is skipped, so a killed pipeline
resumes where it stopped and a changed recipe field re-runs exactly the stages that read it and their
dependants. A stamp whose artifact is gone does not count. A failed stage names itself; every finished
stage keeps its stamp. The stamp is written when a stage starts too (status running, then failed or
done): re-running after a crash or a kill lets the stage resume from its own trainer checkpoints, while
a stage whose inputs changed since its last attempt (or that is forced) first has its output removed,
so it never resumes from checkpoints trained with other settings. A stage re-run with
unchanged inputs (`--only`, or a lost artifact) keeps its fingerprint, so its dependants are not
re-run: use `--from STAGE` to redo everything after it.

Launching (config/launch.py): a recipe with `launcher.num_processes > 1`, an accelerate config or a DeepSpeed
config runs the training stages (the stage table's `launch="training"`: `sft`, `distill`) under `accelerate
launch … -m distillkit_scd <stage> OUT/resolved_recipe.yaml …`, so each DeepSpeed engine starts fresh, and the
`data_parallel` forward-only stages as data-parallel processes (rows sharded, see utils/sharding.py).
`validate` and the pipeline check the launch first (batch arithmetic, precision,
the DeepSpeed JSON) and the pipeline logs how it will run. A single-process recipe runs
each stage in a fresh `python -m distillkit_scd …` (clean state; a crash cannot take the pipeline's
bookkeeping with it) or, with `in_process=True` (the quickstart's default), in this process: that
saves the ~7 s import of torch/transformers/TRL per stage, a third of the CPU quickstart's time.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillkit_scd.config import Recipe, RecipeError, check_local_files, load_recipe
from distillkit_scd.config.launch import accelerate_command, check_launch, describe
from distillkit_scd.config.methods import METHODS, SFT_ROWS, ZERO_SHOT_ROWS
from distillkit_scd.config.stages import STAGES, StageSpec, needs, stage_spec
from distillkit_scd.data.check import check_data
from distillkit_scd.models.refs import prepare_models
from distillkit_scd.pipeline.fingerprints import digest, fingerprints, identity, stage_fields, stage_inputs
from distillkit_scd.utils import interrupts
from distillkit_scd.utils.atomic import atomic_write_json, atomic_write_text
from distillkit_scd.utils.progress import StageClock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    name: stage name (`sft-teacher`, `eval-td`, …).  command: the CLI stage command and its options
    (without the recipe).  needs: upstream stage names.  inputs: the dotted recipe fields that affect its
    results (`fingerprints.stage_fields`, from `config.schema.FIELD_STAGES`).
    artifact: the file under OUT that proves it finished; a stamp without it does not count.
    output: the file or folder under OUT the stage writes; removed before a run with new inputs, so
        that the stage's own resume logic never continues from checkpoints of other settings.
    """

    name: str
    command: tuple[str, ...]
    needs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    artifact: str = ""
    output: str = ""

    @property
    def spec(self) -> StageSpec:
        """The stage's row in `stages.STAGES`."""
        return stage_spec(self.command[0])


@dataclass
class StageResult:
    stage: str
    status: str  # pending | running | done | skipped | failed | interrupted | would run | would skip
    seconds: float = 0.0
    reason: str = ""
    command: str = ""


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message names it and how to continue."""


def build_stages(recipe: Recipe) -> list[Stage]:
    """The ordered stage list of a recipe: zero-shot evaluations (if `evaluation.zero_shot`), SFT of teacher
    and student, their evaluations, the teacher-signal cache (if `distill.teacher_signal: cached`), the AW
    table (if a method uses AW), each method's distillation then its evaluation, the report. What each
    stage is (command, needs, inputs, artifact, output) comes from its row in `stages.STAGES`."""
    stages: list[Stage] = []

    def add(command: str, value: str | None = None) -> None:
        spec = STAGES[command]
        name = spec.stage_name(value)
        artifact, output = spec.files(value, recipe.task.name)
        stages.append(Stage(name, spec.argv(value), needs(spec, value, [s.name for s in stages]),
                            stage_fields(recipe, name), artifact, output))

    methods = [m for m in METHODS if m in recipe.distill.methods]  # paper order, whatever the recipe's
    for row in ZERO_SHOT_ROWS if recipe.evaluation.zero_shot else ():
        add("evaluate", row)
    for role in STAGES["sft"].option.choices:  # teacher, student
        add("sft", role)
    for row in SFT_ROWS:
        add("evaluate", row)
    if recipe.distill.teacher_signal == "cached" and methods:  # one teacher pass per checkpoint, shared
        add("signals")
    if any(METHODS[m].aw for m in methods):
        add("aw-table")
    for method in methods:
        add("distill", method)
        add("evaluate", method)
    add("report")
    return stages


def is_multiprocess(recipe: Recipe) -> bool:
    """Whether any stage runs under `accelerate launch` (see config/launch.py); such stages cannot run in-process."""
    la = recipe.launcher
    return la.num_processes > 1 or la.accelerate_config is not None or la.deepspeed_config is not None


def launch_command(recipe: Recipe, stage: Stage, recipe_path: Path) -> list[str]:
    """The command that runs a stage: `python -m distillkit_scd …`, or `accelerate launch … -m distillkit_scd …`
    as `launch.accelerate_command` decides from the stage's row."""
    spec = stage.spec
    target = recipe.output_dir if spec.on_run_dir else recipe_path
    return accelerate_command(recipe, spec.command) + ["-m", "distillkit_scd", spec.command, str(target),
                                                        *stage.command[1:]]


def run_stage_command(recipe: Recipe, command: tuple[str, ...] | list[str]) -> Path | dict:
    """Run one stage command (`("sft", "--role", "teacher")`, …) in this process; shared by the CLI's
    stage commands and the in-process pipeline. The stage function is imported here, lazily."""
    spec = stage_spec(command[0])
    value = command[2] if spec.option and len(command) == 3 else None
    if spec.option and value not in spec.option.choices:
        raise ValueError(f"stage command {spec.command} {spec.option.flag}: expected one of "
                         f"{', '.join(spec.option.choices)}, got {value!r}")
    interrupts.note_stage(spec.stage_name(value))
    if spec.runs_model:
        prepare_models(recipe)  # under `accelerate launch` every rank gets here; a file lock serialises them
    function = spec.function()
    if spec.on_run_dir:
        return function(recipe.output_dir)
    return function(recipe, value) if spec.option else function(recipe)


def select_stages(stages: list[Stage], only: list[str] | None, start: str | None) -> tuple[list[Stage], set[str]]:
    """(stages to visit, stages forced to run). `only` forces just those; `start` forces it and all after.

    Raises:
        ValueError: for a stage name the recipe does not have, or both `only` and `start`.
    """
    names = [s.name for s in stages]
    if only and start:
        raise ValueError("--only and --from: expected at most one of them")
    for name in (only or []) + ([start] if start else []):
        if name not in names:
            raise ValueError(f"stage {name!r}: not a stage of this recipe; expected one of {', '.join(names)}")
    if only:
        chosen = [s for s in stages if s.name in only]
        return chosen, {s.name for s in chosen}
    if start:
        chosen = stages[names.index(start):]
        return chosen, {s.name for s in chosen}
    return list(stages), set()


def read_stamp(out: Path, stage: str) -> dict:
    path = out / "stages" / f"{stage}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # missing or torn (a stamp is replaced atomically, so torn means hand-edited): re-run


def _changed_fields(stamp: dict, inputs: dict[str, Any]) -> list[str]:
    """Dotted recipe fields whose value differs from the stamp's (down to the changed leaf)."""

    def diff(prefix: str, old: Any, new: Any) -> list[str]:
        if isinstance(old, dict) and isinstance(new, dict):
            return [f for k in sorted(set(old) | set(new)) for f in diff(f"{prefix}.{k}", old.get(k), new.get(k))]
        return [prefix] if digest(old) != digest(new) else []

    old = stamp.get("inputs", {})
    return [f for k in inputs for f in diff(k, old.get(k), inputs[k])]


Runner = Callable[[Stage, list[str]], int]


def run_pipeline(recipe_path: str | Path, overrides: list[str] | None = None, only: list[str] | None = None,
                 start: str | None = None, dry_run: bool = False, in_process: bool = False,
                 runner: Runner | None = None) -> list[StageResult]:
    """Run every stage of a recipe that is not up to date; returns one result per visited stage.

    Args:
        recipe_path, overrides: the recipe and its `--set key=value` overrides.
        only: run just these stages (forced, even when up to date).
        start: run this stage and every later one (forced).
        dry_run: report what would run or be skipped, and the commands, without running anything.
        in_process: run single-process stages in this process instead of a fresh subprocess.
        runner: `runner(stage, command) -> exit code`, replacing the launcher and the preparation of
            `tiny:` models (tests).

    Raises:
        RecipeError: the recipe is invalid.  ValueError: unknown stage names.
        StageFailed: a stage failed; earlier stamps are kept and `OUT/stages/summary.json` says which.
        interrupts.Interrupted: SIGINT/SIGTERM during a stage, recorded `interrupted` in its stamp and
            the summary (re-running resumes it from its own checkpoints).
    """
    recipe = load_recipe(recipe_path, overrides)
    data_note = check_data(recipe, str(recipe_path))  # missing data is an error here, dry runs included
    logger.info("%s", data_note)
    check_local_files(recipe, str(recipe_path), overrides)
    launch = check_launch(recipe, str(recipe_path))
    out = Path(recipe.output_dir)
    stages = build_stages(recipe)
    ident = identity(recipe)  # the data's content hash and the models' identity (pipeline/fingerprints.py)
    prints = fingerprints(recipe, stages, ident)
    chosen, forced = select_stages(stages, only, start)
    resolved = out / "resolved_recipe.yaml"
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(resolved, recipe.to_yaml())
    if runner is None:  # a given runner (tests) replaces the whole launch, model preparation included
        if not dry_run and any(s.spec.runs_model for s in chosen):
            prepare_models(recipe)  # once, before any stage process starts
        runner = _in_process_runner(recipe) if in_process and not is_multiprocess(recipe) else _subprocess_runner
    results = [StageResult(s.name, "pending") for s in chosen]
    summary_path = out / "stages" / "summary.json"

    def save_summary() -> None:
        if not dry_run:
            atomic_write_json(summary_path, default=str, data={"recipe": str(recipe_path), "overrides": overrides or [],
                                        "stages": [vars(r) for r in results]})

    logger.info("%s: %d stages (%s), run directory %s", recipe.name, len(chosen),
                ", ".join(s.name for s in chosen), out)
    logger.info("%s", describe(launch))

    def up_to_date(stage: Stage, stamp: dict) -> bool:
        artifact_ok = not stage.artifact or (out / stage.artifact).exists()
        return stamp.get("status") == "done" and stamp.get("fingerprint") == prints[stage.name] and artifact_ok

    stamps = {s.name: read_stamp(out, s.name) for s in chosen}
    clock = StageClock({s.name: (s.command[0], stamps[s.name].get("seconds")) for s in chosen
                        if s.name in forced or not up_to_date(s, stamps[s.name])})
    for i, (stage, res) in enumerate(zip(chosen, results), 1):
        tag = f"[{i}/{len(chosen)}] {stage.name:24}"
        stamp = stamps[stage.name]
        inputs = stage_inputs(recipe, stage, ident)
        artifact_ok = not stage.artifact or (out / stage.artifact).exists()
        if dry_run:  # nothing is written: the commands name the recipe and its --set overrides
            cmd = launch_command(recipe, stage, Path(recipe_path))
            cmd += [] if stage.spec.on_run_dir else [a for o in overrides or [] for a in ("--set", o)]
        else:
            cmd = launch_command(recipe, stage, resolved)
        res.command = shlex.join(cmd)
        if up_to_date(stage, stamp) and stage.name not in forced:
            res.status, res.reason = ("would skip" if dry_run else "skipped"), "inputs unchanged"
            logger.info("%s skip (inputs unchanged)", tag)
            continue
        if stage.name in forced:
            res.reason = "forced (--only/--from)"
        elif not stamp:
            res.reason = "not run yet"
        elif stamp.get("fingerprint") == prints[stage.name] and stamp.get("status") != "done":
            res.reason = f"resuming an attempt that ended {stamp.get('status', 'early')}"
        elif not artifact_ok:
            res.reason = f"{stage.artifact} missing"
        else:
            changed = _changed_fields(stamp, inputs)
            res.reason = ("changed: " + ", ".join(changed)) if changed else "upstream stage changed"
        missing = [n for n in stage.needs if read_stamp(out, n).get("status") != "done" and n not in
                   {s.name for s in chosen[:i - 1]}]
        if missing:
            logger.warning("%s upstream stage(s) %s have no stamp; it will likely fail", tag, ", ".join(missing))
        if dry_run:
            res.status = "would run"
            logger.info("%s would run (%s)", tag, res.reason)
            continue
        # A stage whose last attempt (done or not) had other inputs, or that is forced, starts clean; an
        # attempt with these inputs that was interrupted keeps its files, and the stage resumes from them.
        if stage.output and (stage.name in forced or stamp.get("fingerprint") not in (None, prints[stage.name])):
            _remove(out / stage.output, tag)
        logger.info("%s running (%s); %s", tag, res.reason, clock.text())
        res.status = "running"
        atomic_write_json(out / "stages" / f"{stage.name}.json", default=str, data={
            "stage": stage.name, "fingerprint": prints[stage.name], "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": res.command, "inputs": inputs})
        save_summary()
        began = time.time()
        try:
            code = runner(stage, cmd)
        except KeyboardInterrupt as err:  # SIGINT/SIGTERM (`interrupts`): record it, the CLI prints one line
            stop = interrupts.Interrupted(stage.name, interrupts.current(err).step)
            res.status, res.seconds = "interrupted", round(time.time() - began, 2)
            atomic_write_json(out / "stages" / f"{stage.name}.json", default=str, data={
                "stage": stage.name, "fingerprint": prints[stage.name], "status": "interrupted",
                "step": stop.step, "seconds": res.seconds, "command": res.command, "inputs": inputs})
            save_summary()
            raise stop from None
        res.seconds = round(time.time() - began, 2)
        if code != 0:
            res.status = "failed"
            atomic_write_json(out / "stages" / f"{stage.name}.json", default=str, data={
                "stage": stage.name, "fingerprint": prints[stage.name], "status": "failed", "exit_code": code,
                "seconds": res.seconds, "command": res.command, "inputs": inputs})
            save_summary()
            raise StageFailed(
                f"stage {stage.name} failed (exit code {code}) after {res.seconds:.0f} s; finished stages are "
                f"kept in {out / 'stages'} — fix the cause and re-run the same command to continue. "
                f"Command: {res.command}"
            )
        atomic_write_json(out / "stages" / f"{stage.name}.json", default=str, data={
            "stage": stage.name, "fingerprint": prints[stage.name], "status": "done", "seconds": res.seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": res.command, "inputs": inputs,
            "upstream": {n: prints[n] for n in stage.needs},
        })
        res.status = "done"
        save_summary()
        clock.done(stage.name, res.seconds)
        logger.info("%s done in %.1f s", tag, res.seconds)
    save_summary()
    return results


def _remove(path: Path, tag: str) -> None:
    if path.is_dir():
        logger.info("%s removing %s (written with other inputs)", tag, path)
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _subprocess_runner(stage: Stage, cmd: list[str]) -> int:
    """Run a stage process and return its exit code. A SIGINT/SIGTERM sent to this process is forwarded
    to it (a second one kills it); once it has exited, `Interrupted` names the stage and the step it
    reported (see `interrupts`)."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="distillkit-scd-") as tmp:
        report = Path(tmp) / "interrupt.json"
        env[interrupts.CHILD_ENV] = str(report)
        received: list[int] = []
        proc: subprocess.Popen | None = None

        def forward(signum, frame) -> None:
            received.append(signum)
            try:
                if proc is not None:
                    proc.kill() if len(received) > 1 else proc.send_signal(signum)
            except ProcessLookupError:
                pass

        try:  # before the start: a signal that arrives while the stage starts is forwarded too
            previous = {sig: signal.signal(sig, forward) for sig in interrupts.SIGNALS}
        except ValueError:  # not the main thread: no forwarding
            previous = {}
        try:
            proc = subprocess.Popen(cmd, env=env)
            if received:  # arrived before the stage process existed
                proc.send_signal(received[0])
            code = proc.wait()
        finally:
            for sig, handler in previous.items():  # after a forwarded signal, ignore more during clean-up
                signal.signal(sig, signal.SIG_IGN if received else handler)
        if received or code in (interrupts.EXIT_CODE, -signal.SIGINT, -signal.SIGTERM):
            raise interrupts.Interrupted(stage.name, interrupts.read_child_report(report))
        return code


def _in_process_runner(recipe: Recipe) -> Runner:
    def run(stage: Stage, cmd: list[str]) -> int:
        try:
            run_stage_command(recipe, stage.command)
        except (RecipeError, ValueError) as err:  # bad input: one clear line, as the CLI prints it
            logger.error("stage %s: %s", stage.name, err)
            return 2
        except Exception:
            logger.exception("stage %s raised", stage.name)
            return 1
        finally:
            gc.collect()  # models of the finished stage go before the next loads its own
        return 0

    return run


def format_summary(results: list[StageResult]) -> str:
    """A plain-text table: stage, status, seconds, why it ran."""
    lines = [f"{'stage':26} {'status':10} {'seconds':>8}  reason"]
    lines += [f"{r.stage:26} {r.status:10} {r.seconds:8.1f}  {r.reason}" for r in results]
    lines.append(f"{'total':26} {'':10} {sum(r.seconds for r in results):8.1f}")
    return "\n".join(lines)
