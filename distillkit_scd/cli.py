"""The `distillkit-scd` command (also `python -m distillkit_scd`, and `accelerate launch -m distillkit_scd`).

Pipeline:  quickstart [--out DIR] | run RECIPE | sweep RECIPE --grid F=V1,V2 | validate RECIPE | plan RECIPE
           | report RUN_DIR | toy
Stages (what `run` launches, one process each):  sft | aw-table | signals | distill | evaluate
DistillKit:  distillkit CONFIG | distillkit-teacher CONFIG --checkpoints N | aw-table CONFIG (docs/distillkit.md)
Data:  data fetch pubmedqa|jmed|all --to DIR (the paper's data, checksummed) | data example OUT.jsonl

Every RECIPE command takes `--set key.path=value` (repeatable; values are YAML). A bad recipe prints
one line naming the file, the field path and what was expected, and exits with code 2. A failed
pipeline stage exits with code 1 and names the stage; re-running the same command continues. Ctrl-C
or SIGTERM prints where the run stopped and exits with code 130; re-running resumes.

The quickstart recipe is package data (`distillkit_scd/recipes/quickstart.yaml`), so it works from an
installed wheel; `recipes/quickstart.yaml` in the repository extends it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

from distillkit_scd.config import RecipeError, check_local_files, load_recipe
from distillkit_scd.config.stages import STAGES
from distillkit_scd.utils import interrupts
from distillkit_scd.utils.atomic import DiskFullError
from distillkit_scd.utils.log import is_main_process, setup_logging

logger = logging.getLogger("distillkit_scd")



def quickstart_recipe_path() -> Path:
    """The embedded default recipe (package data, so it works from an installed wheel too)."""
    return Path(str(resources.files("distillkit_scd") / "recipes" / "quickstart.yaml"))


def _add_recipe(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("recipe", help="recipe YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe field (repeatable; value parsed as YAML), e.g. --set distill.alpha=0.3")


def _stage_list(values: list[str] | None) -> list[str] | None:
    """`--only a b` and `--only a,b` both work."""
    if not values:
        return None
    return [name for v in values for name in v.split(",") if name]


def build_parser(with_toy: bool = True) -> argparse.ArgumentParser:
    """The argument parser; `with_toy=False` leaves out the toy's options (and its torch import)."""
    parser = argparse.ArgumentParser(prog="distillkit-scd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="warnings, errors and results only: no progress lines or bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("quickstart", help="all nine Table 1 rows on `synthetic` with tiny models (CPU, minutes)")
    p.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    _add_recipe(p, positional=False)
    p.add_argument("--subprocess", action="store_true",
                   help="run each stage in a fresh process (slower: ~7 s of imports per stage)")
    p.add_argument("--dry-run", action="store_true", help="print the stages and commands without running")

    p = sub.add_parser("run", help="run every stage of a recipe, skipping those whose inputs are unchanged")
    _add_recipe(p)
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run just these stages, even if up to date")
    p.add_argument("--from", dest="start", metavar="STAGE", help="run this stage and all later ones")
    p.add_argument("--dry-run", action="store_true", help="print what would run or be skipped, and the commands")
    p.add_argument("--in-process", action="store_true",
                   help="single-process recipes: run stages in this process (faster start, shared state)")

    p = sub.add_parser("sweep", help="grid search for the TD baseline (the paper's), then every row at the best point")
    _add_recipe(p)
    p.add_argument("--grid", action="append", required=True, metavar="FIELD=V1,V2,...",
                   help="recipe field and values to try, e.g. optim.learning_rate=5e-6,1e-5,2e-5 (repeatable: "
                        "every combination)")
    p.add_argument("--in-process", action="store_true", help="single-process recipes: run stages in this process")

    p = sub.add_parser("validate", help="check a recipe (types, ranges, local files) and print it resolved")
    _add_recipe(p)

    p = sub.add_parser("plan", help="stages, step counts and a GPU memory estimate per device")
    _add_recipe(p)

    for spec in STAGES.values():  # the stage commands, from the stage table (stages.py)
        if spec.cli:
            p = sub.add_parser(spec.command, help=spec.help)
            _add_recipe(p)
            if spec.option:
                p.add_argument(spec.option.flag, required=True, choices=spec.option.choices, help=spec.option.help)

    p = sub.add_parser("report", help=STAGES["report"].help)
    p.add_argument("run_dir", nargs="+", help="run directory (several: one table across tasks)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.add_argument("--protocol", choices=("paper", "clean"),
                   help="checkpoints selected on test (paper) or validation (clean); default: as each run was")

    p = sub.add_parser("toy", help="the paper's Fig. 2 sine-boundary experiment (`toy --help`: options)")
    if with_toy:  # the toy imports torch; only pay for it when the toy is the command
        from distillkit_scd import toy

        toy.add_arguments(p)

    p = sub.add_parser("distillkit", help="run an arcee-ai DistillKit config with our losses and schedules")
    p.add_argument("config", help="DistillKit YAML with a `distillkit_scd:` section")

    p = sub.add_parser("distillkit-teacher", help="teacher SFT on a DistillKit config's data: N checkpoints + "
                                                  "the manifest CD / SCD read")
    p.add_argument("config", help="DistillKit YAML (its teacher, dataset, sequence_length, training_args)")
    p.add_argument("--checkpoints", type=int, required=True, metavar="N", help="evenly spaced checkpoints to save")
    p.add_argument("--out", help="folder for checkpoints and manifest.json (default: the config's "
                                 "schedule.manifest folder, else OUTPUT_PATH/teacher_sft)")
    p.add_argument("--epochs", type=float, help="default: training_args.max_steps, else num_train_epochs (3)")
    p.add_argument("--learning-rate", type=float, help="default: training_args.learning_rate")

    p = sub.add_parser("data", help="get data: the paper's from its sources, or an example chat JSONL")
    data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data.add_parser("fetch", help="download PubMedQA / JMED-LLM from GitHub, verify checksums, write the "
                                      "layout the tasks read")
    q.add_argument("names", nargs="+", choices=("pubmedqa", "jmed", "all"), help="what to fetch")
    q.add_argument("--to", required=True, metavar="DIR", help="data folder (tasks read data/ unless DISTILLKIT_SCD_DATA names another)")
    q = data.add_parser("example", help="write a small chat JSONL (the synthetic task's rows) for `task.name: chat`")
    q.add_argument("out", help="the .jsonl file to write")
    q.add_argument("--rows", type=int, default=200, help="rows to write (default: 200)")
    q.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 a stage failed, 2 bad input, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    words = [a for a in argv if not a.startswith("-")]
    args = build_parser(with_toy=bool(words) and words[0] == "toy").parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        with interrupts.handlers():
            code = _dispatch(args)
        if "torch" in sys.modules:  # a stage ran: leave no process group to the interpreter's teardown
            from distillkit_scd.utils.distributed import release_process_group

            release_process_group()
        return code
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: one line (from the pipeline, not its stages)
        if not interrupts.report_as_child(err):
            print(interrupts.current(err).message(), file=sys.stderr)
        return interrupts.EXIT_CODE
    except (RecipeError, ValueError) as err:  # bad input: one clear line, no traceback
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DiskFullError as err:  # names the file; what was written before is intact (atomic writes)
        if args.verbose:
            raise
        print(f"error: {err.strerror}", file=sys.stderr)
        return 1


def _recipe(args):
    return load_recipe(args.recipe, args.overrides)


def _dispatch(args) -> int:
    cmd = args.command
    if cmd == "validate":
        from distillkit_scd.data.check import check_data

        recipe = _recipe(args)
        data_note = check_data(recipe, args.recipe)
        check_local_files(recipe, args.recipe, args.overrides)
        from distillkit_scd.config.launch import check_launch, describe

        launch = check_launch(recipe, args.recipe)
        print(recipe.to_yaml(), end="")
        print(f"# {data_note}", file=sys.stderr)
        print(f"# {args.recipe}: valid; {describe(launch)}", file=sys.stderr)
        return 0
    if cmd == "data":
        return _data(args)
    if cmd in ("run", "quickstart"):
        return _run(args)
    if cmd == "sweep":
        return _sweep(args)
    if cmd == "plan":
        from distillkit_scd.pipeline.plan import format_plan

        print(format_plan(_recipe(args)))
        return 0
    if cmd in ("aw-table", "distillkit-teacher") and _distillkit_command(args) is not None:
        return 0
    if cmd in STAGES and STAGES[cmd].cli:
        from distillkit_scd.pipeline.run import run_stage_command

        spec = STAGES[cmd]
        result = run_stage_command(_recipe(args), spec.argv(getattr(args, spec.option.dest) if spec.option else None))
        if is_main_process():
            logger.info("%s: wrote %s", cmd, result)
        return 0
    if cmd == "report":
        from distillkit_scd.reporting.report import write_report

        kwargs = {"extra_run_dirs": args.run_dir[1:]} if len(args.run_dir) > 1 else {}
        kwargs.update({"protocol": args.protocol} if args.protocol else {})
        written = write_report(args.run_dir[0], args.out, **kwargs)
        if "markdown" in written:
            print(Path(written["markdown"]).read_text(encoding="utf-8"))
        return 0
    if cmd == "toy":
        from distillkit_scd import toy

        return toy.run_from_args(args)
    if cmd == "distillkit":
        try:
            from distillkit_scd.integrations.distillkit import main as distillkit_main
        except ImportError as err:
            raise ValueError(f"distillkit: the DistillKit integration is not available ({err})") from None
        return distillkit_main([args.config])
    raise AssertionError(f"unhandled command {cmd}")  # argparse restricts commands; unreachable


def _distillkit_command(args) -> Path | None:
    """`distillkit-teacher`, and `aw-table` given a DistillKit config; None when not one of those."""
    from distillkit_scd.integrations.distillkit_checks import is_distillkit_config

    if args.command == "aw-table" and not is_distillkit_config(args.recipe):
        return None
    path = args.recipe if args.command == "aw-table" else args.config
    if getattr(args, "overrides", None):
        raise ValueError(f"{path}: --set applies to our recipes, not to a DistillKit config; edit the YAML")
    from distillkit_scd.integrations.distillkit import DistillKitUnavailable

    try:
        if args.command == "aw-table":
            from distillkit_scd.integrations.distillkit_aw_table import build_table

            result = build_table(path)
        else:
            from distillkit_scd.integrations.distillkit_teacher import run_teacher_sft

            result = run_teacher_sft(path, args.checkpoints, args.out, args.epochs, args.learning_rate)
    except DistillKitUnavailable as err:
        raise ValueError(str(err)) from None
    print(result)
    return result


def _data(args) -> int:
    if args.data_command == "fetch":
        from distillkit_scd.data.fetch import fetch

        for folder in fetch(args.names, args.to):
            print(f"{folder}: checksums verified")
        print(f"use it with DISTILLKIT_SCD_DATA={args.to} (unset: data/), or task.source: one of the folders above")
        return 0
    from distillkit_scd.tasks.synthetic import chat_jsonl
    from distillkit_scd.utils.atomic import atomic_write_text

    path = atomic_write_text(Path(args.out), chat_jsonl(args.rows, args.seed))
    print(f"{path}: {args.rows} chat rows (messages: system, user, assistant; plus id and tag)")
    return 0


def _sweep(args) -> int:
    from distillkit_scd.pipeline.run import StageFailed
    from distillkit_scd.pipeline.sweep import format_grid, run_sweep

    try:
        record = run_sweep(args.recipe, args.grid, args.overrides, in_process=args.in_process)
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_grid(record), end="")
    print(f"Chosen: {record['chosen']['point']} → {record['chosen']['folder']}")
    return 0


def _run(args) -> int:
    from distillkit_scd.pipeline.run import StageFailed, format_summary, run_pipeline

    if args.command == "quickstart":
        path, overrides = quickstart_recipe_path(), [f"output_dir={args.out}", *args.overrides]
        only = start = None
        in_process = not args.subprocess
    else:
        path, overrides = Path(args.recipe), args.overrides
        only, start, in_process = _stage_list(args.only), args.start, args.in_process
    try:
        results = run_pipeline(path, overrides, only=only, start=start, dry_run=args.dry_run,
                               in_process=in_process)
    except RecipeError as err:  # quickstart's --out is passed on as --set output_dir=…: say what was typed
        if args.command == "quickstart":
            raise RecipeError(str(err).replace(f"--set output_dir={args.out}:", f"--out {args.out}:")) from None
        raise
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(results))
    if args.dry_run:
        for r in results:
            if r.status == "would run":
                print(f"{r.stage}: {r.command}")
        return 0
    out = Path(load_recipe(path, overrides).output_dir)
    table = out / "report" / "table1.md"
    if table.is_file():
        print("\n" + table.read_text(encoding="utf-8").split("\n## The paper")[0].rstrip())
        print(f"Report and figures: {table.parent}")
    return 0
