"""Evaluation stage: `distillkit-scd evaluate RECIPE --row ROW` → `results/<row>/<task>.json`.

Rows: `teacher_zero_shot`, `student_zero_shot` (base models), `teacher_sft`, `student_sft` and the five
distillation methods. For a trained row every saved checkpoint (the N SFT checkpoints, or the N stage
ends of a distillation run) is scored on the validation and the test split; the reported score is the
checkpoint with the best validation score (default), and the paper's protocol — best *test* score — is
recorded beside it, labelled, because selecting on test inflates results.
"""

from __future__ import annotations

import logging
from pathlib import Path

from distillkit_scd.config import METHODS, Recipe
from distillkit_scd.evaluation import PRIMARY_METRICS, score_task
from distillkit_scd.results import build_results, write_results
from distillkit_scd.workspace import Workspace

logger = logging.getLogger(__name__)

ZERO_SHOT_ROWS = ("teacher_zero_shot", "student_zero_shot")
SFT_ROWS = ("teacher_sft", "student_sft")
ROWS = ZERO_SHOT_ROWS + SFT_ROWS + METHODS


def candidates(ws: Workspace, row: str) -> list[tuple[str, str]]:
    """(label, model path) of every model to score for a row."""
    from distillkit_scd.teachers import read_manifest

    if row in ZERO_SHOT_ROWS:
        role = row.split("_")[0]
        return [("base", ws.base_model(role))]
    if row in SFT_ROWS:
        folder = ws.sft_dir(row.split("_")[0])
    elif row in METHODS:
        folder = ws.distill_dir(row)
    else:
        raise ValueError(f"--row: expected one of {', '.join(ROWS)}, got {row!r}")
    entries, _, _ = read_manifest(folder)
    return [(f"step-{e.step}", e.path) for e in entries]


def primary_score(task: str, metrics: dict) -> float:
    """The selection score: the mean of the task's Table 1 metrics."""
    keys = PRIMARY_METRICS[task]
    return sum(metrics[k] for k in keys) / len(keys)


def score_model(model, tokenizer, split, task: str, recipe: Recipe, max_new_tokens: int):
    from distillkit_scd.generation import generate

    prompts = [m[:-1] for m in split["messages"]]
    budget = max(8, recipe.task.max_length - max_new_tokens)
    generations = generate(model, tokenizer, prompts, max_new_tokens, recipe.evaluation.batch_size,
                           max_prompt_length=budget)
    metrics, samples = score_task(task, list(split["answer"]), generations)
    for sample, rid, gold, text in zip(samples, split["id"], split["answer"], generations):
        sample.update({"id": rid, "gold": gold, "generation": text})
    return metrics, samples


def run_evaluation(recipe: Recipe, row: str) -> Path:
    """Score a row on the test split (and, for trained rows, select the checkpoint on validation)."""
    from distillkit_scd.models import load_model, load_tokenizer
    from distillkit_scd.tasks import get_task

    ws = Workspace(recipe)
    task = recipe.task.name
    spec = get_task(task)
    max_new = recipe.evaluation.max_new_tokens or spec.max_new_tokens
    splits = ws.task_splits()
    m = recipe.models
    tokenizer = load_tokenizer(ws.base_model("student" if row.startswith("student") or row in METHODS
                                             else "teacher"), m.trust_remote_code)
    scored = []
    for label, path in candidates(ws, row):
        model = load_model(path, m.dtype, m.trust_remote_code, m.attn_implementation)
        if _cuda():
            model = model.to("cuda")
        entry = {"checkpoint": label, "path": str(path)}
        if row not in ZERO_SHOT_ROWS and len(splits["validation"]):
            val_metrics, _ = score_model(model, tokenizer, splits["validation"], task, recipe, max_new)
            entry["validation"] = val_metrics
        entry["test"], entry["samples"] = score_model(model, tokenizer, splits["test"], task, recipe, max_new)
        logger.info("%s %s: test %s", row, label, {k: round(v, 4) for k, v in entry["test"].items()})
        scored.append(entry)
        del model

    # Ties go to the later checkpoint (more training at equal score).
    if all("validation" in e for e in scored):
        by_val = max(range(len(scored)), key=lambda i: (primary_score(task, scored[i]["validation"]), i))
    else:
        by_val = len(scored) - 1  # zero-shot rows, or no validation split: the final model
    by_test = max(range(len(scored)), key=lambda i: (primary_score(task, scored[i]["test"]), i))
    chosen = scored[by_val]
    info = getattr(splits, "split_info", {})
    selection = {
        "by": "validation" if "validation" in chosen else "only checkpoint",
        "paper_protocol": {"checkpoint": scored[by_test]["checkpoint"], "metrics": scored[by_test]["test"],
                           "note": "best test score over checkpoints (the paper's protocol; optimistic)"},
        "candidates": [{k: v for k, v in e.items() if k != "samples"} for e in scored],
    }
    result = build_results(
        task, row, {"definition": info.get("definition", ""), "sizes": info.get("sizes", {})},
        {"path": chosen["path"], "checkpoint": chosen["checkpoint"]}, chosen["test"], chosen["samples"],
        {"max_new_tokens": max_new, "batch_size": recipe.evaluation.batch_size, "decoding": "greedy"}, selection,
    )
    path = ws.results_path(row)
    write_results(path, result)
    return path


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
