"""Checks on a DistillKit YAML that run before any model is loaded (no DistillKit import needed here).

DistillKit's pydantic schema ignores keys it does not know, so a misspelt `distillkit_scd:` section or a
typo in a loss option would silently change the run. Through our entry point they are errors, each one
line naming the file and key. The teacher manifest is validated field by field (format in
docs/distillkit.md), its checkpoint folders resolved and their tensor shapes compared with the teacher's
safetensors headers, so a wrong checkpoint fails at start, not when its stage begins.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from distillkit_scd.config import RecipeError

logger = logging.getLogger(__name__)

SECTION = "distillkit_scd"
OUR_LOSS_OPTIONS = ("function", "weight", "temperature")
"""Keys an entry of `loss_functions` that names one of our losses may have (DistillKit's others do not apply)."""


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), for near-miss key detection."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _closest(key: str, allowed) -> str:
    near = min(allowed, key=lambda a: edit_distance(key, a))
    return f" (did you mean {near!r}?)" if edit_distance(key, near) <= 2 else ""


def check_top_level(data: dict, source: str) -> None:
    """A top-level key within edit distance 2 of `distillkit_scd` (but not it) is refused: DistillKit would
    ignore it and the run would silently lose our schedule and losses. (No DistillKit field is that close.)"""
    for key in data:
        if not isinstance(key, str) or key == SECTION:
            continue
        if edit_distance(key.lower(), SECTION) <= 2:
            raise RecipeError(f"{source}: top-level key {key!r} looks like a misspelling of {SECTION!r} "
                              "(DistillKit would ignore it, and with it our settings); rename it")


def check_loss_entries(data: dict, our_losses, dk_options: set[str] | None, source: str) -> None:
    """Entries of `loss_functions` naming our losses may have only function, weight and temperature;
    DistillKit's own entries with keys its schema does not know get a warning (DistillKit ignores them;
    `dk_options`: its `LossFunctionConfig` fields, None to skip the warnings)."""
    entries = data.get("loss_functions")
    if not isinstance(entries, list):
        return  # absent (DistillKit's default) or malformed: DistillKit's schema reports it
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        name = entry.get("function")
        if name in our_losses:
            for key in entry:
                if key not in OUR_LOSS_OPTIONS:
                    raise RecipeError(f"{source}: loss_functions[{i}].{key}: unknown option for {name}"
                                      f"{_closest(str(key), OUR_LOSS_OPTIONS)}; allowed: {', '.join(OUR_LOSS_OPTIONS)}")
        elif dk_options is not None:
            for key in entry:
                if key not in dk_options:
                    logger.warning("%s: loss_functions[%d].%s is not a DistillKit loss option%s; DistillKit "
                                   "ignores it", source, i, key, _closest(str(key), dk_options))


# --------------------------------------------------------------------------------------------------
# The teacher manifest (docs/distillkit.md, "The manifest").
# --------------------------------------------------------------------------------------------------

_REQUIRED = {"index": int, "path": str, "step": int, "epoch": (int, float)}
_OPTIONAL = {"val_loss": (int, float), "val_score": (int, float)}


def _type_ok(value, types) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def validate_manifest(path: str | Path, where: str) -> Path:
    """Check a teacher manifest's structure field by field; returns the manifest file's path.

    Raises:
        RecipeError: one line naming `where` (the config field), the manifest file and the bad field.
    """
    path = Path(path)
    file = path / "manifest.json" if path.is_dir() else path
    if not file.is_file():
        raise RecipeError(f"{where}: {file}: manifest not found (write it with `distillkit-scd distillkit-teacher "
                          "CONFIG --checkpoints N`, or by hand: see docs/distillkit.md)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecipeError(f"{where}: {file}: not readable JSON ({err})") from None

    def bad(field: str, expected: str, got: Any) -> RecipeError:
        return RecipeError(f"{where}: {file}: {field}: expected {expected}, got {got!r}")

    if not isinstance(data, dict):
        raise bad("<top level>", "an object with checkpoints and best_index", data)
    unknown = sorted(set(data) - {"checkpoints", "best_index", "selected_by"})
    if unknown:
        raise bad(unknown[0], "no such key (allowed: checkpoints, best_index, selected_by)", data[unknown[0]])
    entries = data.get("checkpoints")
    if not isinstance(entries, list) or not entries:
        raise bad("checkpoints", "a non-empty list of checkpoint objects", entries)
    for j, entry in enumerate(entries):
        at = f"checkpoints[{j}]"
        if not isinstance(entry, dict):
            raise bad(at, "an object {index, path, step, epoch[, val_loss, val_score]}", entry)
        for key, types in _REQUIRED.items():
            if key not in entry:
                raise RecipeError(f"{where}: {file}: {at}.{key}: missing (every checkpoint needs "
                                  f"{', '.join(_REQUIRED)})")
            if not _type_ok(entry[key], types):
                raise bad(f"{at}.{key}", "a number" if key == "epoch" else f"a {types.__name__}", entry[key])
        for key, types in _OPTIONAL.items():
            value = entry.get(key)
            if value is not None and not (_type_ok(value, types) and math.isfinite(value)):
                raise bad(f"{at}.{key}", "a finite number or null", value)
        extra = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
        if extra:
            raise bad(f"{at}.{extra[0]}", f"no such key (allowed: {', '.join([*_REQUIRED, *_OPTIONAL])})",
                      entry[extra[0]])
        if entry["index"] != j:
            raise bad(f"{at}.index", f"{j} (0-based, in list order)", entry["index"])
        if entry["step"] < 0 or entry["epoch"] < 0:
            raise bad(f"{at}.step/epoch", "numbers >= 0", (entry["step"], entry["epoch"]))
    best = data.get("best_index")
    if not _type_ok(best, int) or not 0 <= best < len(entries):
        raise bad("best_index", f"an integer in 0..{len(entries) - 1}", best)
    if not isinstance(data.get("selected_by", ""), str):
        raise bad("selected_by", "a string", data["selected_by"])
    return file


def tensor_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a safetensors checkpoint folder, from the file headers only (no weights read).

    Raises:
        ValueError: no safetensors in the folder, or an unreadable file (named).
    """
    from safetensors import safe_open

    from distillkit_scd.models.checkpoints import checkpoint_files

    out = {}
    files = checkpoint_files(folder)
    for file in sorted(set(files.values())):
        try:
            with safe_open(str(file), framework="pt") as fh:
                for name in fh.keys():
                    out[name] = tuple(fh.get_slice(name).get_shape())
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{file}: cannot read safetensors header ({err})") from None
    return out


def check_checkpoint_shapes(pool, teacher_path: str, where: str) -> None:
    """Every checkpoint of `pool` has the teacher's tensors and shapes (safetensors headers; a Hub teacher
    is checked against the first checkpoint instead, and again against the live module at trainer start).

    Raises:
        RecipeError: naming the checkpoint file's folder and the first mismatching tensor.
    """
    reference_dir = Path(teacher_path)
    ref_name = str(reference_dir)
    try:
        if reference_dir.is_dir():
            reference = tensor_shapes(reference_dir)
        else:
            reference, ref_name = tensor_shapes(pool.path(0)), f"checkpoint 0 ({pool.path(0)})"
        for j in range(pool.num_checkpoints):
            got = tensor_shapes(pool.path(j))
            for name, shape in got.items():
                if name not in reference:
                    raise ValueError(f"{pool.path(j)}: tensor {name!r} is not in the teacher {ref_name}; is it a "
                                     "checkpoint of this teacher?")
                if shape != reference[name]:
                    raise ValueError(f"{pool.path(j)}: tensor {name!r} has shape {shape}, the teacher {ref_name} "
                                     f"has {reference[name]}; every checkpoint must have the teacher's shape")
    except ValueError as err:
        raise RecipeError(f"{where}: {err}") from None


def check_module_shapes(module, pool) -> None:
    """The live teacher module against every checkpoint's headers (trainer start; catches Hub teachers).

    Raises:
        ValueError: naming the checkpoint folder and tensor.
    """
    from distillkit_scd.teachers.pool import param_shape
    from distillkit_scd.utils.distributed import unwrap

    model = unwrap(module)
    expected = {n: param_shape(p) for n, p in model.named_parameters(remove_duplicate=False)}
    for j in range(pool.num_checkpoints):
        for name, shape in tensor_shapes(pool.path(j)).items():
            if name in expected and shape != expected[name]:
                raise ValueError(f"{pool.path(j)}: tensor {name!r} has shape {shape}, the loaded teacher has "
                                 f"{expected[name]}; every checkpoint must have the teacher's shape")


# --------------------------------------------------------------------------------------------------
# What plain `distillkit` would have ignored.
# --------------------------------------------------------------------------------------------------

MARKER = "distillkit_scd_run.json"
"""Written into `output_path` by our entry point; its absence beside DistillKit's own
`distillkit_config.yaml` means plain `distillkit` wrote that folder."""


def plain_run_hint(output_path: str | Path, uses_ours: bool) -> str | None:
    """One line when this config uses our section or losses and `output_path` holds a run by plain
    `distillkit` (its `distillkit_config.yaml` without our marker): plain `distillkit` cannot see our
    settings (it ignores the section, and drops it from the config it saves, and refuses our loss names)."""
    out = Path(output_path)
    if not uses_ours or not (out / "distillkit_config.yaml").is_file() or (out / MARKER).is_file():
        return None
    return (f"note: {out} holds a run by plain `distillkit`, which ignores the {SECTION}: section (its schedule, "
            "TAID and AW settings were not applied); this run applies them")


def is_distillkit_config(path: str | Path) -> bool:
    """True for a DistillKit YAML (a top-level `teacher:` mapping and `dataset:`), False for our recipes
    (whose models sit under `models:`); unreadable files are False (the recipe loader reports them)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and isinstance(data.get("teacher"), dict) and "dataset" in data
