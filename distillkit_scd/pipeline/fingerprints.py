"""Stage fingerprints, derived from the recipe schema rather than listed by hand.

A stage's fingerprint is sha256 of its name, the values of the recipe fields that affect it, the identity
of its data and models, and the fingerprints of its upstream stages. Which fields affect which stages is
declared once, beside the fields: `config.schema.FIELD_STAGES` (or `RESULT_NEUTRAL` for fields that change
no result); a field in neither is an error here and in tests/test_fingerprints.py.

Identity (for every stage that runs a model):
- data: sha256 of the task's rows, split by split, as the stages load them (a file edited in place, or a
  new download, re-runs everything); a Hub dataset id is taken as named (not downloaded to hash it);
- models: a local folder is its resolved path + the sha256 of its weights and config (`hashing.folder_hash`,
  memoised on disk by size and mtime); a Hub id is `id@commit` of the locally cached snapshot (else the id
  alone); a `tiny:` reference is built from the recipe's seed, which is already a field.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

from distillkit_scd.config.schema import FIELD_STAGES, RESULT_NEUTRAL, Recipe
from distillkit_scd.config.stages import MODEL_STAGES  # the stage table's `runs_model` rows


@functools.cache  # the schema is fixed; every stage of every `build_stages` asks
def recipe_fields(tp: Any = Recipe, prefix: str = "") -> tuple[str, ...]:
    """Every leaf field of the recipe schema, dotted (`distill.taid.alpha`); mappings are leaves."""
    hints = typing.get_type_hints(tp)
    out: list[str] = []
    for f in dataclasses.fields(tp):
        sub = hints[f.name]
        if dataclasses.is_dataclass(sub):
            out += recipe_fields(sub, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return tuple(out)


def unclassified_fields(tp: Any = Recipe) -> list[str]:
    """Recipe fields in neither `FIELD_STAGES` nor `RESULT_NEUTRAL` (must be none)."""
    return [f for f in recipe_fields(tp) if f not in FIELD_STAGES and f not in RESULT_NEUTRAL]


def _matches(stage: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(stage, p) for p in patterns)


def stage_fields(recipe: Recipe, stage: str) -> tuple[str, ...]:
    """The recipe fields (dotted) whose values affect `stage`'s results.

    Raises:
        ValueError: a recipe field is not classified (see the module docstring).
    """
    missing = unclassified_fields()
    if missing:
        raise ValueError(f"recipe field {missing[0]}: in neither config_schema.FIELD_STAGES nor RESULT_NEUTRAL; "
                         "declare the stages it affects (or why it affects none)")
    out = []
    for name in recipe_fields():
        patterns = FIELD_STAGES.get(name, ())
        if _matches(stage, patterns(recipe) if callable(patterns) else patterns):
            out.append(name)
    return tuple(out)


def _field(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


def model_identity(ref: str) -> str:
    """What a model reference currently is (see the module docstring)."""
    if ref.startswith("tiny:"):
        return ref
    path = Path(ref).expanduser()
    if path.is_dir():
        from distillkit_scd.utils import hashing

        return f"{path.resolve()} sha256:{hashing.folder_hash(path)}"
    try:  # offline: the snapshot a Hub id resolves to in the local cache (snapshots/<commit>/config.json)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
    except Exception:  # not a valid repo id, or no huggingface_hub: the id is all we know
        cached = None
    return f"hub:{ref}@{Path(cached).parent.name}" if isinstance(cached, str) else f"hub:{ref}"


def data_identity(recipe: Recipe) -> str:
    """sha256 of the task's rows as loaded (every split, in order), or `hub:<id>` for a Hub dataset."""
    from distillkit_scd.data.check import is_hub_id
    from distillkit_scd.tasks import load_task

    t = recipe.task
    if is_hub_id(t.source):
        return f"hub:{t.source}"
    splits = load_task(t.name, t.source, **{"seed": recipe.seed, **t.options})
    digest = hashlib.sha256()
    for split in sorted(splits):
        digest.update(f"[{split}]".encode())
        for row in splits[split]:
            digest.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()


def identity(recipe: Recipe) -> dict[str, str]:
    """The data and model identity entering the fingerprints of `MODEL_STAGES`."""
    return {"data": data_identity(recipe), "models.teacher": model_identity(recipe.models.teacher),
            "models.student": model_identity(recipe.models.student)}


def stage_inputs(recipe: Recipe, stage, ident: dict[str, str] | None = None) -> dict[str, Any]:
    """What a stage's results depend on besides its upstream stages: the values of its fields (`stage.inputs`)
    and, for a stage that runs a model, `identity.*` (computed when `ident` is not given)."""
    data = recipe.to_dict()
    out = {key: _field(data, key) for key in stage.inputs}
    if _matches(stage.name, MODEL_STAGES):
        out.update({f"identity.{k}": v for k, v in (ident if ident is not None else identity(recipe)).items()})
    return out


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def fingerprints(recipe: Recipe, stages: list, ident: dict[str, str] | None = None) -> dict[str, str]:
    """sha256 of (stage name, its inputs, its upstream fingerprints), in stage order."""
    ident = identity(recipe) if ident is None and any(_matches(s.name, MODEL_STAGES) for s in stages) else ident
    out: dict[str, str] = {}
    for stage in stages:
        payload = {"stage": stage.name, "inputs": stage_inputs(recipe, stage, ident),
                   "upstream": {n: out[n] for n in stage.needs}}
        out[stage.name] = digest(payload)
    return out
