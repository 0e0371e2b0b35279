"""Recipe loading: YAML → merged dict (``extends``, ``--set``) → typed dataclasses → semantic checks.

Unknown keys and wrong types are errors that name the file and the field path (``recipes/x.yaml:
distill.alpha: expected a number in [0, 1], got 1.5``): DistillKit silently ignores typos, we don't.
Relative paths in a recipe are taken relative to the current working directory (like torchtune and TRL),
except ``extends``, which is relative to the recipe file that names it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from distillkit_scd.config.schema import FieldError, Recipe, RecipeError


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, merge and validate a recipe file.

    Args:
        path: the recipe YAML.
        overrides: ``key.path=value`` strings (values parsed as YAML) applied after ``extends``.

    Raises:
        RecipeError: naming the file and field path for unknown keys, wrong types or bad values.
    """
    path = Path(path)
    data = _load_with_extends(path, chain=())
    for item in overrides or []:
        _apply_override(data, item, source=path)
    try:
        return recipe_from_dict(data, source=str(path))
    except RecipeError as err:
        raise _blame_override(err, str(path), overrides or []) from None


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Build and validate a `Recipe` from an already-merged dict."""
    recipe = _build(Recipe, data, path="", source=source)
    check_recipe(recipe, source=source)
    return recipe


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text ({err})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _load_with_extends(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError(f"{path}: `extends` forms a cycle: {cycle}")
    data = _load_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for item in bases:
        if not isinstance(item, str):
            raise RecipeError(f"{path}: extends: expected a path or list of paths, got {item!r}")
        merged = _deep_merge(merged, _load_with_extends(path.parent / item, (*chain, resolved)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_override(data: dict[str, Any], item: str, source: Path) -> None:
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set {item!r}: empty component in key path {key!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise RecipeError(f"--set {item!r}: value is not valid YAML: {err}") from None
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _blame_override(err: RecipeError, source: str, overrides: list[str]) -> RecipeError:
    """An error about a field that a `--set` wrote names that `--set KEY=VALUE`, not the recipe file
    (which, for `quickstart`, is a path inside the installed package)."""
    message = str(err)
    if not message.startswith(f"{source}: "):
        return err
    rest = message[len(source) + 2:]
    match = re.match(r"(?:unknown key |missing required key )?([\w.\[\]]+)", rest)
    field = re.sub(r"\[\d+\]", "", match.group(1)) if match else ""
    for item in reversed(overrides):  # the last --set of a key is the one that counts
        key = item.split("=", 1)[0].strip()
        if field and (field == key or field.startswith(key + ".") or key.startswith(field + ".")):
            return RecipeError(f"--set {item}: {rest}")
    return err


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _build(tp: Any, value: Any, path: str, source: str) -> Any:
    """Convert ``value`` to type ``tp`` strictly, raising `RecipeError` with the field path."""
    where = f"{source}: {path or '<top level>'}"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        known = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            sub = f"{path}." if path else ""
            raise RecipeError(
                f"{source}: unknown key {sub}{unknown[0]!s}; allowed keys here: {', '.join(sorted(known))}"
            )
        kwargs = {}
        for name, f in known.items():
            sub = f"{path}.{name}" if path else name
            if name in value:
                kwargs[name] = _build(hints[name], value[name], sub, source)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"{source}: missing required key {sub} ({_type_name(hints[name])})")
        try:
            return tp(**kwargs)  # the section's __post_init__ checks its own values
        except FieldError as err:
            raise RecipeError(f"{source}: {f'{path}.' if path else ''}{err.field}: {err.detail}") from None
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, path, source)
            except RecipeError as err:
                errors.append(err)
        raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_build(item_tp, v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads `1e-5` (no dot) as a string; accept numeric strings of that form explicitly.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise RecipeError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {path}")


def _require(ok: bool, source: str, path: str, value: Any, expected: str) -> None:
    if not ok:
        raise RecipeError(f"{source}: {path}: expected {expected}, got {value!r}")


def check_recipe(recipe: Recipe, source: str = "<recipe>") -> None:
    """Checks across fields and sections, and against the installation (each section checks its own values
    in its `__post_init__`, config/schema.py)."""
    from distillkit_scd.tasks import TASKS  # local import: tasks pull in datasets

    r = recipe
    _require(r.task.name in TASKS, source, "task.name", r.task.name, "one of " + ", ".join(sorted(TASKS)))
    import datetime

    try:
        datetime.datetime.strptime(r.task.date_string, "%d %b %Y")
    except ValueError:
        raise RecipeError(f"{source}: task.date_string: expected a date written as the templates write it "
                          f"(e.g. '26 Jul 2024'), got {r.task.date_string!r}") from None
    o = r.optim
    from distillkit_scd.schedules.lr import check_scheduler

    try:
        check_scheduler(o.lr_scheduler_type, r.training_args.get("lr_scheduler_kwargs"))
    except ValueError as err:
        raise RecipeError(f"{source}: {err}") from None
    if o.nonfinite_loss == "skip" and (r.launcher.deepspeed_config is not None or "deepspeed" in r.training_args):
        raise RecipeError(
            f"{source}: optim.nonfinite_loss: 'skip' is not supported with DeepSpeed (it steps the optimizer "
            "inside backward, so a bad update cannot be withheld); use 'stop' (the default)"
        )
    d = r.distill
    if d.fused_loss == "liger":
        from distillkit_scd.losses.liger_loss import check_liger_available

        try:
            check_liger_available()
        except ValueError as err:
            raise RecipeError(f"{source}: {err}") from None
    e = r.evaluation
    if e.select_by == "validation" and r.task.options.get("validation_fraction", 0.1) == 0:
        raise RecipeError(f"{source}: evaluation.select_by: 'validation' selects checkpoints on the validation "
                          "split, but task.options.validation_fraction is 0; use select_by: test (the paper's "
                          "protocol) or a validation_fraction > 0 (the clean protocol)")
    la = r.launcher
    if la.deepspeed_config is not None and la.mixed_precision == "fp16" and r.models.dtype == "bfloat16":
        raise RecipeError(
            f"{source}: launcher.mixed_precision: fp16 conflicts with models.dtype bfloat16; "
            "use mixed_precision: bf16"
        )
    if "output_dir" in r.training_args or "seed" in r.training_args:
        raise RecipeError(
            f"{source}: training_args: output_dir and seed are set by the recipe's top-level keys; "
            "remove them from training_args"
        )


def is_local_path(name: str) -> bool:
    """A model/data reference is local when it looks like a path or exists on disk; else a Hub id."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def check_local_files(recipe: Recipe, source: str = "<recipe>", overrides: list[str] | None = None) -> None:
    """Check that every local path a recipe names exists and that `output_dir` can be written (used by
    `validate` and `run`, before any launch); an error about a field a `--set` wrote names that `--set`."""
    try:
        _check_local_files(recipe, source)
    except RecipeError as err:
        raise _blame_override(err, source, overrides or []) from None


def _check_local_files(recipe: Recipe, source: str) -> None:
    refs = {
        "models.teacher": recipe.models.teacher,
        "models.student": recipe.models.student,
        "task.source": recipe.task.source,
        "launcher.accelerate_config": recipe.launcher.accelerate_config,
        "launcher.deepspeed_config": recipe.launcher.deepspeed_config,
    }
    for key, ref in refs.items():
        if ref is None:
            continue
        local = key.startswith("launcher.") or ref.startswith((".", "/", "~"))
        if local and not Path(ref).expanduser().exists():
            raise RecipeError(f"{source}: {key}: local path {ref!r} does not exist")
    check_output_dir(recipe.output_dir, source)


def check_output_dir(output_dir: str, source: str = "<recipe>") -> None:
    """`output_dir` must be a folder, or a path whose nearest existing ancestor is a writable folder."""
    path = Path(output_dir).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise RecipeError(f"{source}: output_dir: {output_dir!r} {what}; expected a folder (or a new path)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RecipeError(f"{source}: output_dir: {output_dir!r} is not writable ({existing} does not let this "
                          "user create files); choose another output_dir")
