"""`distillkit-scd run RECIPE`: the whole study for one task, as resumable stages.

Each stage runs as its own process (`python -m distillkit_scd <stage> …`, or `accelerate launch` when the
recipe asks for several processes or an accelerate/DeepSpeed config), so DeepSpeed engines start fresh
and a crash never takes the pipeline's bookkeeping with it. After a stage succeeds, a stamp
`OUT/stages/<stage>.json` records the fingerprint of its inputs — the recipe sections it reads and the
fingerprints of the stages it depends on. A stage whose stamp matches is skipped; a changed recipe
section re-runs that stage and everything downstream; a failed stage names itself and leaves every
finished stage in place. The training stages themselves resume from their last trainer checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distillkit_scd.config import Recipe

logger = logging.getLogger(__name__)

_COMMON = ("models", "task", "seed")


@dataclass
class Stage:
    """One step of the pipeline: its command-line arguments, upstream stages and recipe sections read."""

    name: str
    args: list[str]
    needs: list[str] = field(default_factory=list)
    sections: tuple[str, ...] = _COMMON


def build_stages(recipe: Recipe) -> list[Stage]:
    """The ordered stage list for a recipe (zero-shot rows only when `evaluation.zero_shot`)."""
    train_sections = (*_COMMON, "optim", "sft", "training_args", "launcher")
    eval_sections = (*_COMMON, "evaluation")
    stages: list[Stage] = []
    if recipe.evaluation.zero_shot:
        for role in ("teacher", "student"):
            stages.append(Stage(f"eval-{role}_zero_shot", ["evaluate", "--row", f"{role}_zero_shot"],
                                sections=eval_sections))
    for role in ("teacher", "student"):
        stages.append(Stage(f"sft-{role}", ["sft", "--role", role], sections=train_sections))
        stages.append(Stage(f"eval-{role}_sft", ["evaluate", "--row", f"{role}_sft"], [f"sft-{role}"],
                            eval_sections))
    methods = recipe.distill.methods
    if "scd_aw" in methods:
        stages.append(Stage("aw-table", ["aw-table"], ["sft-teacher", "sft-student"], (*_COMMON, "evaluation")))
    for method in methods:
        needs = ["sft-teacher", "sft-student"] + (["aw-table"] if method == "scd_aw" else [])
        stages.append(Stage(f"distill-{method}", ["distill", "--method", method], needs,
                            (*train_sections, "distill")))
        stages.append(Stage(f"eval-{method}", ["evaluate", "--row", method], [f"distill-{method}"], eval_sections))
    evals = [s.name for s in stages if s.name.startswith("eval-")]
    stages.append(Stage("report", ["report"], evals, ()))
    return stages


def fingerprints(recipe: Recipe, stages: list[Stage]) -> dict[str, str]:
    data = recipe.to_dict()
    out: dict[str, str] = {}
    for stage in stages:
        payload = {"stage": stage.name, "args": stage.args, "sections": {k: data[k] for k in stage.sections},
                   "upstream": {n: out[n] for n in stage.needs}}
        out[stage.name] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return out


def launch_command(recipe: Recipe, stage: Stage, recipe_path: Path) -> list[str]:
    """The command that runs a stage: a plain subprocess, or `accelerate launch` for multi-process runs."""
    la = recipe.launcher
    tail = ["-m", "distillkit_scd", stage.args[0], str(recipe_path), *stage.args[1:]]
    if stage.args[0] == "report":
        tail = ["-m", "distillkit_scd", "report", str(recipe.output_dir)]
    multi = la.num_processes > 1 or la.accelerate_config is not None
    if stage.args[0] in ("sft", "distill") and multi:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(la.num_processes)]
        if la.accelerate_config:
            cmd += ["--config_file", la.accelerate_config]
        if la.mixed_precision != "no":
            cmd += ["--mixed_precision", la.mixed_precision]
        return cmd + tail
    return [sys.executable, *tail]


def _atomic_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class StageFailed(RuntimeError):
    pass


def select(stages: list[Stage], only: list[str] | None, start: str | None) -> list[Stage]:
    names = [s.name for s in stages]
    for name in (only or []) + ([start] if start else []):
        if name not in names:
            raise ValueError(f"unknown stage {name!r}; stages of this recipe: {', '.join(names)}")
    if only:
        return [s for s in stages if s.name in only]
    if start:
        return stages[names.index(start):]
    return stages


def run_pipeline(recipe: Recipe, only: list[str] | None = None, start: str | None = None, dry_run: bool = False,
                 runner=None) -> list[dict]:
    """Run (or skip) every stage; returns the status rows. `runner(cmd) -> returncode` is injectable."""
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / "resolved_recipe.yaml"
    tmp = recipe_path.with_suffix(".yaml.tmp")
    tmp.write_text(recipe.to_yaml(), encoding="utf-8")
    os.replace(tmp, recipe_path)
    stages = build_stages(recipe)
    prints = fingerprints(recipe, stages)
    chosen = select(stages, only, start)
    forced = {s.name for s in chosen} if (only or start) else set()
    runner = runner or _run_subprocess
    rows: list[dict] = []
    for i, stage in enumerate(chosen, 1):
        stamp_path = out / "stages" / f"{stage.name}.json"
        stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
        up_to_date = stamp.get("fingerprint") == prints[stage.name] and stamp.get("status") == "done"
        if up_to_date and stage.name not in forced and stage.name != "report":
            rows.append({"stage": stage.name, "status": "skipped", "seconds": 0.0})
            logger.info("[%d/%d] %-22s skipped (inputs unchanged)", i, len(chosen), stage.name)
            continue
        cmd = launch_command(recipe, stage, recipe_path)
        if dry_run:
            rows.append({"stage": stage.name, "status": "would run", "seconds": 0.0, "command": shlex.join(cmd)})
            logger.info("[%d/%d] %-22s would run: %s", i, len(chosen), stage.name, shlex.join(cmd))
            continue
        logger.info("[%d/%d] %-22s running …", i, len(chosen), stage.name)
        started = time.time()
        code = runner(cmd)
        seconds = time.time() - started
        if code != 0:
            rows.append({"stage": stage.name, "status": "failed", "seconds": seconds})
            _atomic_json(out / "stages" / "summary.json", rows)
            raise StageFailed(f"stage {stage.name} failed (exit code {code}) after {seconds:.0f} s; finished stages "
                              f"are kept — fix the cause and re-run the same command to continue. Command: "
                              f"{shlex.join(cmd)}")
        _atomic_json(stamp_path, {"fingerprint": prints[stage.name], "status": "done", "seconds": seconds,
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        rows.append({"stage": stage.name, "status": "done", "seconds": seconds})
        logger.info("[%d/%d] %-22s done in %.1f s", i, len(chosen), stage.name, seconds)
    if not dry_run:
        _atomic_json(out / "stages" / "summary.json", rows)
    return rows


def _run_subprocess(cmd: list[str]) -> int:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return subprocess.run(cmd, env=env).returncode


def format_summary(rows: list[dict]) -> str:
    lines = [f"{'stage':24} {'status':10} {'seconds':>8}"]
    lines += [f"{r['stage']:24} {r['status']:10} {r['seconds']:8.1f}" for r in rows]
    lines.append(f"{'total':24} {'':10} {sum(r['seconds'] for r in rows):8.1f}")
    return "\n".join(lines)
