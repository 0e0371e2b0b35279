"""The `distillkit-scd` command (also `python -m distillkit_scd`, and under `accelerate launch -m distillkit_scd`).

Pipeline: `quickstart`, `run RECIPE`, `validate RECIPE`, `plan RECIPE`, `report RUN_DIR`, `toy`.
Stages (what `run` launches, one process each): `sft`, `aw-table`, `distill`, `evaluate`.
Integration: `distillkit CONFIG` runs an arcee-ai DistillKit config with our losses and schedules.

A bad recipe prints one line naming the file, the field and the expectation, and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path

from distillkit_scd.config import METHODS, RecipeError, check_local_files, load_recipe

logger = logging.getLogger("distillkit_scd")

ROWS = ("teacher_zero_shot", "student_zero_shot", "teacher_sft", "student_sft", *METHODS)


def setup_logging(verbose: bool = False) -> None:
    """Log from the main process only (RANK 0 under accelerate/torchrun); quiet the others."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quickstart_recipe_path() -> Path:
    """The embedded default recipe (package data, so it works from an installed wheel too)."""
    return Path(str(resources.files("distillkit_scd") / "recipes" / "quickstart.yaml"))


def _add_recipe(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe field (repeatable), e.g. --set distill.alpha=0.3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillkit-scd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="all nine Table 1 rows on `synthetic` with tiny models (CPU, minutes)")
    p.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    p = sub.add_parser("run", help="run every stage of a recipe (skipping finished ones)")
    _add_recipe(p)
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run just these stages (forced)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="run from this stage on (forced)")
    p.add_argument("--dry-run", action="store_true", help="print the stages and commands without running")

    p = sub.add_parser("validate", help="check a recipe without running it")
    _add_recipe(p)

    p = sub.add_parser("plan", help="stages, step counts and GPU memory estimate per device")
    _add_recipe(p)

    p = sub.add_parser("sft", help="stage: domain SFT of the teacher (N checkpoints) or the student")
    _add_recipe(p)
    p.add_argument("--role", required=True, choices=("teacher", "student"))

    p = sub.add_parser("aw-table", help="stage: per-sample AW table for every teacher checkpoint")
    _add_recipe(p)

    p = sub.add_parser("distill", help="stage: distil the student with one method")
    _add_recipe(p)
    p.add_argument("--method", required=True, choices=METHODS)

    p = sub.add_parser("evaluate", help="stage: score one Table 1 row on the test split")
    _add_recipe(p)
    p.add_argument("--row", required=True, choices=ROWS)

    p = sub.add_parser("report", help="Table 1 (Markdown, CSV) and figures from a run directory")
    p.add_argument("run_dir", nargs="+", help="run directory (several: one table across tasks)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")

    p = sub.add_parser("toy", help="the paper's Fig. 2 sine-boundary experiment")
    from distillkit_scd import toy

    toy.add_arguments(p)

    p = sub.add_parser("distillkit", help="run an arcee-ai DistillKit config with our losses and schedules")
    p.add_argument("config", help="DistillKit YAML with a `distillkit_scd:` section")
    return parser


def _recipe(args):
    return load_recipe(args.recipe, args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return _dispatch(args)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # bad input found before or during a stage: one clear line, no traceback
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    cmd = args.command
    if cmd == "validate":
        recipe = _recipe(args)
        check_local_files(recipe, args.recipe)
        print(recipe.to_yaml(), end="")
        print(f"# {args.recipe}: valid", file=sys.stderr)
        return 0
    if cmd in ("run", "quickstart"):
        from distillkit_scd.pipeline import StageFailed, format_summary, run_pipeline

        if cmd == "quickstart":
            recipe = load_recipe(quickstart_recipe_path(), [f"output_dir={args.out}", *args.overrides])
            only = start = None
            dry = False
        else:
            recipe = _recipe(args)
            check_local_files(recipe, args.recipe)
            only, start, dry = args.only, args.start, args.dry_run
        try:
            rows = run_pipeline(recipe, only=only, start=start, dry_run=dry)
        except StageFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(format_summary(rows))
        table = Path(recipe.output_dir) / "report" / "table1.md"
        if not dry and table.is_file():
            print("\n" + table.read_text(encoding="utf-8").split("\n### The paper")[0])
            print(f"Report and figures: {table.parent}")
        return 0
    if cmd == "plan":
        from distillkit_scd.plan import format_plan

        print(format_plan(_recipe(args)))
        return 0
    if cmd == "sft":
        from distillkit_scd.sft import run_sft

        run_sft(_recipe(args), args.role)
        return 0
    if cmd == "aw-table":
        from distillkit_scd.weighting import run_aw_table

        run_aw_table(_recipe(args))
        return 0
    if cmd == "distill":
        from distillkit_scd.distill import run_distill

        run_distill(_recipe(args), args.method)
        return 0
    if cmd == "evaluate":
        from distillkit_scd.evaluate import run_evaluation

        run_evaluation(_recipe(args), args.row)
        return 0
    if cmd == "report":
        from distillkit_scd.report import write_report

        written = write_report(args.run_dir[0], args.out, extra_run_dirs=args.run_dir[1:])
        print(written["markdown"].read_text(encoding="utf-8"))
        return 0
    if cmd == "toy":
        from distillkit_scd import toy

        return toy.run_from_args(args)
    if cmd == "distillkit":
        from distillkit_scd.integrations.distillkit import main as distillkit_main

        return distillkit_main([args.config])
    raise AssertionError(f"unhandled command {cmd}")  # argparse restricts commands; unreachable
