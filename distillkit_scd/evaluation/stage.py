"""Evaluation stage: `distillkit-scd evaluate RECIPE --row ROW` → `results/<row>/<task>.json`.

Rows: `teacher_zero_shot`, `student_zero_shot` (base models), `teacher_sft`, `student_sft` and the five
distillation methods. For a trained row every saved checkpoint (the N SFT checkpoints, or the N stage
ends of a distillation run) is scored on the validation and the test split; the reported score is the
checkpoint with the best validation score (default), and the paper's protocol — best *test* score — is
recorded beside it, labelled, because selecting on test inflates results.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from distillkit_scd.config import Recipe
from distillkit_scd.config.methods import METHODS, ROWS, SFT_ROWS, ZERO_SHOT_ROWS
from distillkit_scd.evaluation.metrics import Scoring
from distillkit_scd.evaluation.results import build_results, write_results
from distillkit_scd.evaluation.selection import best_index, primary_score, protocol_name, selection_split
from distillkit_scd.pipeline.workspace import Workspace

logger = logging.getLogger(__name__)

SCORES_FILE = "selection_scores.json"
"""Per-checkpoint selection scores of an SFT run (a resumed stage re-scores only what is missing)."""



def candidates(ws: Workspace, row: str) -> list[tuple[str, str]]:
    """(label, model path) of every model to score for a row."""
    from distillkit_scd.models.checkpoints import read_manifest, resolve_checkpoint

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
    return [(f"step-{e.step}", str(resolve_checkpoint(folder, e))) for e in entries]


def generation_budget(recipe: Recipe) -> int:
    """`evaluation.max_new_tokens`, else the task's default budget."""
    from distillkit_scd.tasks import get_task

    return recipe.evaluation.max_new_tokens or get_task(recipe.task.name).max_new_tokens


def evaluation_tokenizer(ws: Workspace, row: str):
    """The tokenizer (and chat template) a row's model was trained with: the training tokenizer
    (`Workspace.tokenizer`, the student's, checked against the teacher's) for every trained row, the
    base model's own for the zero-shot rows."""
    from distillkit_scd.data.formatting import pin_template_date
    from distillkit_scd.models.loading import load_tokenizer

    if row in ZERO_SHOT_ROWS:
        own = load_tokenizer(ws.base_model(row.split("_")[0]), ws.recipe.models.trust_remote_code)
        return pin_template_date(own, ws.recipe.task.date_string)
    return ws.tokenizer()


def score_model(model, tokenizer, split, scoring: Scoring, recipe: Recipe, max_new_tokens: int, shard=None):
    """(metrics, samples) of one model on one split: generate and parse, or (loss-only metric) the loss.
    `shard` (`sharding.Shard`): generate this process's batches only and gather the completions."""
    if not scoring.needs_generation:
        from distillkit_scd.evaluation.loss_scores import score_by_loss

        return score_by_loss(model, tokenizer, split, recipe)
    from distillkit_scd.evaluation.generation import generate

    prompts = [m[:-1] for m in split["messages"]]
    # Prompts are cut to the training budget (`task.max_length`), never to make room for the answer: with
    # the official 512-token budget that would leave nothing of a 512-token prompt. Generation stops at
    # end-of-turn, so the budget only bounds answers that run on.
    generations = generate(model, tokenizer, prompts, max_new_tokens, recipe.evaluation.batch_size,
                           max_prompt_length=recipe.task.max_length, shard=shard)
    metrics, samples = scoring.score(list(split["answer"]), generations)
    for sample, rid, gold, text in zip(samples, split["id"], split["answer"], generations):
        sample.update({"id": rid, "gold": gold, "generation": text})
    return metrics, samples


def run_evaluation(recipe: Recipe, row: str) -> Path:
    """Score every checkpoint of a row on test (and validation, when there is one) and report the one
    the recipe's protocol selects; the other protocol's choice is recorded beside it.

    Protocols (`evaluation/selection.py`): `paper` selects on test (the paper's "checkpoint with the best
    performance"), `clean` on validation. The SFT rows report the manifest's p(best) under the recipe's
    protocol, so the Teacher SFT row is the same checkpoint TD/TAID distil from.
    """
    from distillkit_scd.evaluation.scoring import scoring_for
    from distillkit_scd.models.checkpoints import read_manifest
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.utils.sharding import stage_shard

    shard = stage_shard()  # under a data-parallel launch: this process's batches; results gathered
    ws = Workspace(recipe)
    task = recipe.task.name
    scoring = scoring_for(task, recipe.task.options)
    max_new = generation_budget(recipe)
    splits = ws.task_splits()
    m = recipe.models
    tokenizer = evaluation_tokenizer(ws, row)
    has_val = row not in ZERO_SHOT_ROWS and len(splits["validation"]) > 0
    # SFT rows: the SFT stage already generated on the selection split for every checkpoint; reuse it.
    stored = stored_selection_scores(recipe, ws.sft_dir(row.split("_")[0])) if row in SFT_ROWS else {}
    reused = selection_split(recipe)
    scored = []
    for label, path in candidates(ws, row):
        entry, model = {"checkpoint": label, "path": str(path)}, None
        for name in (["validation"] if has_val else []) + ["test"]:
            if name == reused and str(path) in stored:
                metrics, samples = stored[str(path)]["metrics"], stored[str(path)]["samples"]
            else:
                if model is None:
                    model = load_model(path, m.dtype, m.trust_remote_code, m.attn_implementation)
                    model = model.to(shard.device())
                metrics, samples = score_model(model, tokenizer, splits[name], scoring, recipe, max_new, shard)
            entry[name] = metrics
            if name == "test":
                entry["samples"] = samples
        logger.info("%s %s: test %s", row, label, {k: round(v, 4) for k, v in entry["test"].items()})
        scored.append(entry)
        del model

    manifest_best = None
    if row in SFT_ROWS:  # the manifest's p(best) (same selection split, same rule; or val_loss if asked)
        _, best, selected_by = read_manifest(ws.sft_dir(row.split("_")[0]))
        manifest_best = (best, f"manifest p(best): {selected_by}")
    selection = choose_checkpoint(scored, task, recipe.evaluation.select_by, manifest_best, recipe.task.options)
    chosen = scored[selection["protocols"][selection["protocol"]]["index"]]
    info = getattr(splits, "split_info", {})
    result = build_results(
        task, row, {"definition": info.get("definition", ""), "sizes": info.get("sizes", {})},
        {"path": chosen["path"], "checkpoint": chosen["checkpoint"]}, chosen["test"], chosen["samples"],
        {"max_new_tokens": max_new, "batch_size": recipe.evaluation.batch_size, "decoding": "greedy",
         "date_string": recipe.task.date_string}, selection,
        scoring.describe(),
    )
    path = ws.results_path(row)
    if shard.is_main:  # every process holds the same gathered result; one writes it
        write_results(path, result)
    return path


def choose_checkpoint(scored: list[dict], task: str, select_by: str,
                      manifest_best: tuple[int, str] | None = None, options: dict | None = None) -> dict:
    """The `selection` record of a results file: each protocol's checkpoint among `scored` (entries with
    `test` metrics, `samples` and, when there is a validation split, `validation` metrics).

    `paper` takes the best test score, `clean` the best validation score (None without validation);
    ties go to the earlier checkpoint. `manifest_best` (index, how), for the SFT rows, replaces the
    recipe's own protocol's choice with the manifest's p(best). The recipe's protocol is the reported one.
    `options`: the task's options (a `chat` task's metric decides its score, and a loss is minimised).
    """
    has_val = all("validation" in e for e in scored)
    choice = {"paper": best_index([primary_score(task, e["test"], options) for e in scored]),
              "clean": best_index([primary_score(task, e["validation"], options) for e in scored]) if has_val else None}
    protocol = protocol_name(select_by)
    by = f"best score on the {'test' if select_by == 'test' else 'validation'} split (ties: earlier checkpoint)"
    if manifest_best is not None:
        choice[protocol], by = manifest_best
    if choice[protocol] is None:  # clean protocol without a validation split
        choice[protocol], by = len(scored) - 1, "final checkpoint (no validation split)"
    if len(scored) == 1:  # zero-shot rows: one model, whatever the protocol
        choice, by = {"paper": 0, "clean": 0}, "only checkpoint"
    return {
        "by": by, "select_by": select_by, "protocol": protocol,
        "protocols": {name: None if j is None else {
            "checkpoint": scored[j]["checkpoint"], "index": j, "metrics": scored[j]["test"],
            "samples": scored[j]["samples"]} for name, j in choice.items()},
        "candidates": [{k: v for k, v in e.items() if k != "samples"} for e in scored],
    }


def _selection_settings(recipe: Recipe) -> dict:
    """How selection scores are made; stored scores count only when these match (JSON-normalised)."""
    import json

    settings = {"task": recipe.task.name, "options": recipe.task.options, "split": selection_split(recipe),
                "max_new_tokens": generation_budget(recipe), "batch_size": recipe.evaluation.batch_size,
                "date_string": recipe.task.date_string, "max_length": recipe.task.max_length}
    return json.loads(json.dumps(settings))


def stored_selection_scores(recipe: Recipe, folder: Path) -> dict[str, dict]:
    """checkpoint path → {"metrics", "samples"} from `folder/selection_scores.json`, if made as `recipe`
    would make them (same split and generation settings); else {}."""
    import json

    try:
        saved = json.loads((Path(folder) / SCORES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or saved.get("settings") != _selection_settings(recipe):
        return {}
    scores = saved.get("scores", {})
    return {k: v for k, v in scores.items() if isinstance(v, dict) and {"metrics", "samples"} <= set(v)}


def score_checkpoints(recipe: Recipe, folder: Path, paths: Sequence[str], tokenizer) -> list[dict]:
    """Task metrics by generation of every checkpoint on the selection split, in `paths` order.

    Metrics and samples go to `folder/selection_scores.json` as soon as each checkpoint is scored: a
    stage killed while scoring resumes where it stopped, and the SFT rows' evaluation reuses them
    instead of generating again (`stored_selection_scores`; only when made with the same settings).

    Raises:
        ValueError: the selection split is empty (clean protocol with `validation_fraction: 0`).
    """
    from distillkit_scd.evaluation.scoring import scoring_for
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.pipeline.workspace import Workspace
    from distillkit_scd.utils.atomic import atomic_write_json

    split_name = selection_split(recipe)
    split = Workspace(recipe).task_splits()[split_name]
    if not len(split):
        raise ValueError(f"sft.select_by: val_score needs a non-empty {split_name} split to score checkpoints on; "
                         "set task.options.validation_fraction > 0, evaluation.select_by: test (the paper's "
                         "protocol) or sft.select_by: val_loss")
    file = Path(folder) / SCORES_FILE
    m = recipe.models
    done = stored_selection_scores(recipe, folder)
    for path in paths:
        if str(path) not in done:
            model = load_model(str(path), m.dtype, m.trust_remote_code, m.attn_implementation)
            if _cuda():
                model = model.to("cuda")
            scoring = scoring_for(recipe.task.name, recipe.task.options)
            metrics, samples = score_model(model, tokenizer, split, scoring, recipe, generation_budget(recipe))
            del model
            done[str(path)] = {"metrics": metrics, "samples": samples}
            atomic_write_json(file, {"settings": _selection_settings(recipe), "scores": done})
            logger.info("selection (%s split): %s %s", split_name, Path(path).name,
                        {k: round(v, 4) for k, v in metrics.items()})
    return [done[str(path)]["metrics"] for path in paths]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
