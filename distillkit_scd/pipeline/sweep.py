"""`distillkit-scd sweep RECIPE --grid FIELD=V1,V2,…`: the paper's "strong TD baseline via grid search".

The paper: "Learning rate is tuned per task to ensure a strong TD baseline … We first establish a strong TD
baseline via grid search, then apply the optimal configuration to all methods for controlled comparison."
It prints neither the grid nor the split it chose on; ours:

1. For each grid point (one value per `--grid` field; several fields: every combination) the TD row runs
   as its own pipeline in `OUT/sweep/<point>/` (the recipe with `--set FIELD=VALUE`,
   `distill.methods=[td]`): SFT of both models, TD, their evaluations.
2. The point with the best TD score on the selection split wins (`evaluation/selection.py`: validation under the
   clean protocol, test under the paper's; the score of the checkpoint that protocol reports; ties: the
   earlier point). `OUT/sweep/grid.json` and `grid.md` record every point's score.
3. The recipe's other rows run at the chosen point, in that point's folder (its finished stages are
   skipped, since adding methods re-runs nothing), and `OUT/sweep/chosen` names that folder.

Stages a grid field does not reach (the SFT of both models, for a `distill.*` field) run once: before a
point runs, every stage whose fingerprint equals a finished stage of the first point is shared —
its output hard-linked (no extra disk) and its stamp copied — so the pipeline skips it there.

Resumable like `run`: each point is a pipeline whose finished stages are skipped on a re-run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from pathlib import Path

from distillkit_scd.config import load_recipe
from distillkit_scd.utils.atomic import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`["optim.learning_rate=5e-6,1e-5"]` → `[("optim.learning_rate", ["5e-6", "1e-5"])]` (values stay
    text: each is applied as `--set FIELD=VALUE`, parsed as YAML there).

    Raises:
        ValueError: an item without `=`, an empty value, a repeated value or a field given twice.
    """
    grid, seen = [], set()
    for item in items:
        field, sep, values = item.partition("=")
        field = field.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not field or not all(parts):
            raise ValueError(f"--grid {item!r}: expected FIELD=VALUE1,VALUE2,… with non-empty values")
        if field in seen or len(set(parts)) != len(parts):
            raise ValueError(f"--grid {item!r}: field given twice or a value repeated")
        seen.add(field)
        grid.append((field, parts))
    if not grid:
        raise ValueError("--grid: expected at least one FIELD=VALUE1,VALUE2,…")
    return grid


def point_name(point: dict[str, str]) -> str:
    """A folder name for a grid point: readable, filesystem-safe, unique (a short hash of the exact values)."""
    text = "_".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
    safe = re.sub(r"[^A-Za-z0-9._=+-]", "-", text)[:80]
    return f"{safe}-{hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:6]}"


def _link_copy(src: Path, dst: Path) -> None:
    """Copy a file or folder as hard links (a plain copy where links are not possible)."""
    import os
    import shutil

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link)
    else:
        link(src, dst)


def share_finished_stages(recipe_path, src_sets: list[str], dst_sets: list[str], src: Path, dst: Path) -> list[str]:
    """Give run folder `dst` every stage that `src` finished with the same fingerprint (output hard-linked,
    stamp copied), unless `dst` has its own record of it; returns the names shared."""
    from distillkit_scd.pipeline.run import build_stages, fingerprints, read_stamp

    a, b = load_recipe(recipe_path, src_sets), load_recipe(recipe_path, dst_sets)
    mine, theirs = fingerprints(b, build_stages(b)), fingerprints(a, build_stages(a))
    shared = []
    for stage in build_stages(b):
        stamp = read_stamp(src, stage.name)
        if (theirs.get(stage.name) != mine[stage.name] or stamp.get("status") != "done" or not stage.output
                or stamp.get("fingerprint") != mine[stage.name] or read_stamp(dst, stage.name)
                or not (src / stage.output).exists() or (dst / stage.output).exists()):
            continue
        _link_copy(src / stage.output, dst / stage.output)
        atomic_write_json(dst / "stages" / f"{stage.name}.json", {**stamp, "shared_from": str(src)})
        shared.append(stage.name)
    return shared


def td_score(run_dir: Path, task: str, options: dict) -> tuple[float, str]:
    """(score, split) of a finished TD row: the selection-split score of the checkpoint its protocol reports."""
    from distillkit_scd.evaluation.results import load_results
    from distillkit_scd.evaluation.selection import primary_score

    data = load_results(run_dir / "results" / "td" / f"{task}.json")
    sel = data["selection"]
    chosen = sel["protocols"][sel["protocol"]]
    if sel["protocol"] == "paper":
        return primary_score(task, chosen["metrics"], options), "test"
    candidate = sel["candidates"][chosen["index"]]
    if "validation" not in candidate:
        raise ValueError(f"{run_dir}: the clean protocol needs a validation split to compare grid points")
    return primary_score(task, candidate["validation"], options), "validation"


def run_sweep(recipe_path: str | Path, grid_items: list[str], overrides: list[str] | None = None,
              in_process: bool = False) -> dict:
    """Run the grid, choose, and run the recipe's rows at the chosen point; returns the grid record."""
    from distillkit_scd.evaluation.selection import best_index
    from distillkit_scd.pipeline.run import run_pipeline

    overrides = list(overrides or [])
    recipe = load_recipe(recipe_path, overrides)
    grid = parse_grid(grid_items)
    root = Path(recipe.output_dir) / "sweep"
    points = [dict(zip([f for f, _ in grid], combo)) for combo in itertools.product(*[v for _, v in grid])]
    rows, first = [], None
    for i, point in enumerate(points, 1):
        folder = root / point_name(point)
        sets = [*overrides, *(f"{k}={v}" for k, v in point.items()), f"output_dir={folder}", "distill.methods=[td]"]
        if first is not None:
            shared = share_finished_stages(recipe_path, first[1], sets, first[0], folder)
            logger.info("sweep point %d: %s shared with %s", i, ", ".join(shared) or "no stage", first[0])
        logger.info("sweep point %d/%d %s → %s", i, len(points), point, folder)
        run_pipeline(recipe_path, sets, in_process=in_process)
        first = first or (folder, sets)
        score, split = td_score(folder, recipe.task.name, recipe.task.options)
        rows.append({"point": point, "folder": str(folder), "td_score": score, "split": split})
    best = best_index([r["td_score"] for r in rows])
    record = {"recipe": str(recipe_path), "overrides": overrides, "grid": dict(grid), "points": rows,
              "chosen": rows[best], "selected_on": rows[best]["split"],
              "rule": "best TD score on the selection split; ties: the earlier grid point"}
    atomic_write_json(root / "grid.json", record)
    atomic_write_text(root / "grid.md", format_grid(record))
    chosen = rows[best]
    logger.info("sweep: chosen %s (TD %.4f on %s); running the recipe's rows there", chosen["point"],
                chosen["td_score"], chosen["split"])
    sets = [*overrides, *(f"{k}={v}" for k, v in chosen["point"].items()), f"output_dir={chosen['folder']}"]
    run_pipeline(recipe_path, sets, in_process=in_process)
    atomic_write_text(root / "chosen", chosen["folder"] + "\n")
    return record


def format_grid(record: dict) -> str:
    """The grid table (Markdown): one line per point, the chosen one marked."""
    fields = list(record["grid"])
    lines = ["| " + " | ".join([*fields, f"TD score ({record['selected_on']})", "chosen"]) + " |",
             "|" + "---|" * (len(fields) + 2)]
    for row in record["points"]:
        mark = "←" if row is record["chosen"] else ""
        lines.append("| " + " | ".join([*(row["point"][f] for f in fields), f"{row['td_score']:.4f}", mark]) + " |")
    return "\n".join(lines) + "\n"
