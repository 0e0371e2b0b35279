"""Typed recipe schema, YAML loading with ``extends`` and ``--set`` overrides, strict validation.

A recipe is YAML that maps onto the dataclasses below. Unknown keys and wrong types are errors that
name the file and the field path (``recipes/x.yaml: distill.alpha: expected a number in [0, 1], got
1.5``): DistillKit silently ignores typos, we don't. Relative paths in a recipe are taken relative to
the current working directory (like torchtune and TRL), except ``extends``, which is relative to the
recipe file that names it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

METHODS = ("td", "taid", "cd", "scd", "scd_aw")
"""Distillation rows of Table 1, in the paper's order."""

Method = Literal["td", "taid", "cd", "scd", "scd_aw"]
Divergence = Literal["forward_kl", "reverse_kl"]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and field path."""


# --------------------------------------------------------------------------------------------------
# Schema. Each field is documented once, here.
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelsConfig:
    """Which models to distil.

    teacher (`str`): Hub id or local folder of the teacher's base model (SFT starts from it), or
        `tiny:teacher` / `tiny:student`: a tiny Llama built on the spot (see `model_refs.py`).
    student (`str`): Hub id, local folder or `tiny:` reference of the student's base model.
    dtype (`str`, defaults to `"float32"`): weights dtype when loading: float32, bfloat16 or float16.
    trust_remote_code (`bool`, defaults to `False`): allow model code from the Hub; off unless asked.
    attn_implementation (`str`, *optional*): e.g. "sdpa", "flash_attention_2"; library default if unset.
    """

    teacher: str
    student: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    attn_implementation: str | None = None


@dataclass
class TaskConfig:
    """The domain task.

    name (`str`): registered task: pubmedqa, jmmlu, crade, rrtnm, smdis, nrner, synthetic, or chat (your
        own data; `tasks/chat.py`, metric chosen by `options.metric`, see `chat_metrics.py`).
    source (`str`, *optional*): local path or Hub dataset id; unset means the task's default.
    options (`dict`, defaults to `{}`): task options passed to `load_task` (e.g. `pool: all`).
    max_length (`int`, defaults to `512`): token budget per example; prompts are cut, answers never.
    date_string (`str`, defaults to `"26 Jul 2024"`): the date chat templates write into the system header
        (Llama-3.x's `date_string`; otherwise today's date), pinned so prompts are the same every day and for
        teacher and student. The default is Llama-3.1's own fallback; the paper does not say (ours).
    """

    name: str
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_length: int = 512
    date_string: str = "26 Jul 2024"


@dataclass
class OptimConfig:
    """Optimiser settings shared by every training stage (the paper's infrastructure).

    per_device_train_batch_size (`int`, defaults to `8`): micro-batch per process.
    gradient_accumulation_steps (`int`, defaults to `1`): micro-batches per optimizer step.
    learning_rate (`float`, defaults to `1e-5`): peak learning rate (stages may override it).
    weight_decay (`float`, defaults to `0.0`): AdamW weight decay.
    adam_beta1 (`float`, defaults to `0.9`), adam_beta2 (`float`, defaults to `0.95`): AdamW betas.
    max_grad_norm (`float`, defaults to `1.0`): gradient clipping.
    lr_scheduler_type (`str`, defaults to `"cosine"`): a transformers scheduler name whose multiplier is a
        function of the step (checked at load; arguments via `training_args.lr_scheduler_kwargs`).
    warmup_ratio (`float`, defaults to `0.1`): warm-up share of each schedule.
    logging_steps (`int`, defaults to `10`): optimizer steps between log lines.
    nonfinite_loss (`str`, defaults to `"stop"`): a step whose loss or gradients are NaN/inf `stop`s the
        run (naming the step, the batch and the last checkpoint), or is `skip`ped: its update is not
        applied (weights and optimizer state unchanged), it is logged and counted. Not with DeepSpeed.
    max_nonfinite_steps (`int`, defaults to `10`): with `skip`, the run stops anyway once more steps than
        this were skipped.
    """

    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    logging_steps: int = 10
    nonfinite_loss: Literal["stop", "skip"] = "stop"
    max_nonfinite_steps: int = 10


@dataclass
class RoleSFTConfig:
    """SFT of one model (teacher or student).

    num_train_epochs (`float`, defaults to `3`): passes over the train split.
    learning_rate (`float`, *optional*): overrides `optim.learning_rate` for this model.
    """

    num_train_epochs: float = 3.0
    learning_rate: float | None = None


@dataclass
class SFTConfig:
    """Domain SFT of teacher and student.

    num_checkpoints (`int`, defaults to `4`): N, teacher checkpoints saved evenly over its training.
    select_by (`str`, defaults to `"val_score"`): how p(best) (and the student's SFT starting point) is
        picked on the selection split (`evaluation.select_by`): `val_score`, the task score by generation
        (the paper: "the teacher checkpoint with the best performance"), or `val_loss`, the lowest CE
        (ours). Ties go to the earlier checkpoint (ours).
    teacher (`RoleSFTConfig`): teacher SFT settings.  student (`RoleSFTConfig`): student SFT settings.
    """

    num_checkpoints: int = 4
    select_by: Literal["val_score", "val_loss"] = "val_score"
    teacher: RoleSFTConfig = field(default_factory=RoleSFTConfig)
    student: RoleSFTConfig = field(default_factory=RoleSFTConfig)


@dataclass
class TAIDConfig:
    """TAID's adaptive interpolation (official defaults, Shing et al. 2025).

    t_start (`float`, defaults to `0.4`), t_end (`float`, defaults to `1.0`): interpolation range.
    alpha (`float`, defaults to `5e-4`): step size of the adaptive update.
    beta (`float`, defaults to `0.99`): momentum of the relative loss change.
    """

    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99


@dataclass
class SCDConfig:
    """Scheduled checkpoint selection.

    probe_size (`int`, defaults to `64`): train samples in the fixed probe set for the KL terms.
    top_k (`int`, defaults to `0`): cache each checkpoint's probe log-probs as top-k plus a tail
        bucket; 0 caches the full distribution (exact; fine for small vocabularies or probe sets).
    """

    probe_size: int = 64
    top_k: int = 0


@dataclass
class DistillConfig:
    """Distillation of the student from its SFT weights.

    methods (`list[str]`, defaults to all five): rows the pipeline runs: td, taid, cd, scd, scd_aw.
    alpha (`float`, defaults to `0.5`): weight of the distillation term (TD, CD, SCD; TAID's mix).
    temperature (`float`, defaults to `1.0`): softmax temperature of both models (T² scaling).
    divergence (`str`, defaults to `"forward_kl"`): forward_kl = KL(p‖q), reverse_kl = KL(q‖p).
    epochs_per_stage (`float`, defaults to `2.0`): T in epochs; each stage lasts T, there are N stages.
    steps_per_stage (`int`, *optional*): T in optimizer steps; overrides `epochs_per_stage`.
    learning_rate (`float`, *optional*): overrides `optim.learning_rate` for distillation.
    reset_optimizer (`bool`, defaults to `True`): clear AdamW's state every T steps (paper: "optimizer reset
        every T steps").
    lr_schedule (`str`, defaults to `"global"`): `global`: one warm-up + decay (`optim.lr_scheduler_type`)
        over the whole N×T run, the literal reading of the paper's "cosine decay with warmup"; `per_stage`
        (ours): the schedule restarts every T steps. Either is transformers' `get_scheduler`.
    chunk_size (`int`, defaults to `1024`): label positions per loss chunk; bounds logits memory.
    teacher_signal (`str`, defaults to `"online"`): run the teacher each step, or read a top-k cache.
    cache_top_k (`int`, defaults to `64`): k of the teacher-signal cache.
    fused_loss (`str`, defaults to `"none"`): "liger" computes the loss with Liger-Kernel's fused chunked
        JSD loss where it is exact (fixed α, forward/reverse KL, online teacher: TD, CD, SCD); TAID and AW
        keep the built-in chunked loss. Needs `pip install liger-kernel`.
    taid (`TAIDConfig`), scd (`SCDConfig`): method settings.
    """

    methods: list[Method] = field(default_factory=lambda: list(METHODS))
    alpha: float = 0.5
    temperature: float = 1.0
    divergence: Divergence = "forward_kl"
    epochs_per_stage: float = 2.0
    steps_per_stage: int | None = None
    learning_rate: float | None = None
    reset_optimizer: bool = True
    lr_schedule: Literal["global", "per_stage"] = "global"
    chunk_size: int = 1024
    teacher_signal: Literal["online", "cached"] = "online"
    cache_top_k: int = 64
    fused_loss: Literal["none", "liger"] = "none"
    taid: TAIDConfig = field(default_factory=TAIDConfig)
    scd: SCDConfig = field(default_factory=SCDConfig)


@dataclass
class EvaluationConfig:
    """Generation and scoring.

    max_new_tokens (`int`, *optional*): generation budget; unset uses the task's default.
    batch_size (`int`, defaults to `16`): prompts per generation batch.
    select_by (`str`, defaults to `"validation"`): the selection split of every "best checkpoint" —
        p(best) and the reported checkpoint of each trained row. `test` is the paper's protocol ("the
        student model checkpoint with the best performance is selected"; optimistic), `validation` ours
        (clean; needs a validation carve-out). Results record both choices, labelled.
    zero_shot (`bool`, defaults to `True`): evaluate the base models (zero-shot rows).
    """

    max_new_tokens: int | None = None
    batch_size: int = 16
    select_by: Literal["validation", "test"] = "validation"
    zero_shot: bool = True


@dataclass
class LauncherConfig:
    """How each stage is launched.

    num_processes (`int`, defaults to `1`): processes for `accelerate launch`; 1 runs in-process.
    accelerate_config (`str`, *optional*): an accelerate config file for multi-GPU / DeepSpeed.
    deepspeed_config (`str`, *optional*): a DeepSpeed JSON passed to the trainer (ZeRO stage etc.).
    mixed_precision (`str`, defaults to `"no"`): no, bf16 or fp16.
    """

    num_processes: int = 1
    accelerate_config: str | None = None
    deepspeed_config: str | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


@dataclass
class Recipe:
    """A whole study for one task.

    name (`str`): a label for logs and reports.
    output_dir (`str`): where every stage writes its artifacts.
    seed (`int`, defaults to `42`): seed of every stage.
    models, task, sft, distill, evaluation, launcher, optim: the sections above.
    training_args (`dict`, defaults to `{}`): extra TRL `SFTConfig` fields, checked against TRL at use.
    """

    name: str
    output_dir: str
    models: ModelsConfig
    task: TaskConfig
    seed: int = 42
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    training_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (the resolved config saved with every artifact)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------------
# Loading: YAML → merged dict (extends, --set) → typed dataclasses → semantic checks.
# --------------------------------------------------------------------------------------------------


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
        return tp(**kwargs)
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
    """Semantic checks that types alone cannot express (ranges, cross-field consistency)."""
    from distillkit_scd.tasks import TASKS  # local import: tasks pull in datasets

    r = recipe
    for role in ("teacher", "student"):  # `tiny:` references: see model_refs.py
        ref = getattr(r.models, role)
        if ref.startswith("tiny:"):
            _require(ref in ("tiny:teacher", "tiny:student"), source, f"models.{role}", ref,
                     "a Hub id, a local folder, tiny:teacher or tiny:student")
    _require(r.task.name in TASKS, source, "task.name", r.task.name, "one of " + ", ".join(sorted(TASKS)))
    _require(r.task.max_length >= 8, source, "task.max_length", r.task.max_length, "an integer >= 8")
    import datetime

    try:
        datetime.datetime.strptime(r.task.date_string, "%d %b %Y")
    except ValueError:
        raise RecipeError(f"{source}: task.date_string: expected a date written as the templates write it "
                          f"(e.g. '26 Jul 2024'), got {r.task.date_string!r}") from None
    _require(r.sft.num_checkpoints >= 1, source, "sft.num_checkpoints", r.sft.num_checkpoints, "N >= 1")
    for role in ("teacher", "student"):
        cfg: RoleSFTConfig = getattr(r.sft, role)
        _require(cfg.num_train_epochs > 0, source, f"sft.{role}.num_train_epochs", cfg.num_train_epochs, "> 0")
        if cfg.learning_rate is not None:
            _require(cfg.learning_rate > 0, source, f"sft.{role}.learning_rate", cfg.learning_rate, "> 0")
    o = r.optim
    _require(o.per_device_train_batch_size >= 1, source, "optim.per_device_train_batch_size",
             o.per_device_train_batch_size, "an integer >= 1")
    _require(o.gradient_accumulation_steps >= 1, source, "optim.gradient_accumulation_steps",
             o.gradient_accumulation_steps, "an integer >= 1")
    _require(o.learning_rate > 0, source, "optim.learning_rate", o.learning_rate, "> 0")
    _require(0 <= o.warmup_ratio < 1, source, "optim.warmup_ratio", o.warmup_ratio, "a number in [0, 1)")
    from distillkit_scd.lr_schedules import check_scheduler

    try:
        check_scheduler(o.lr_scheduler_type, r.training_args.get("lr_scheduler_kwargs"))
    except ValueError as err:
        raise RecipeError(f"{source}: {err}") from None
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(o, name)
        _require(0 <= value < 1, source, f"optim.{name}", value, "a number in [0, 1)")
    _require(o.max_grad_norm >= 0, source, "optim.max_grad_norm", o.max_grad_norm, ">= 0 (0 disables)")
    _require(o.max_nonfinite_steps >= 0, source, "optim.max_nonfinite_steps", o.max_nonfinite_steps,
             "an integer >= 0")
    if o.nonfinite_loss == "skip" and (r.launcher.deepspeed_config is not None or "deepspeed" in r.training_args):
        raise RecipeError(
            f"{source}: optim.nonfinite_loss: 'skip' is not supported with DeepSpeed (it steps the optimizer "
            "inside backward, so a bad update cannot be withheld); use 'stop' (the default)"
        )
    d = r.distill
    _require(0 <= d.alpha <= 1, source, "distill.alpha", d.alpha, "a number in [0, 1]")
    _require(d.temperature > 0, source, "distill.temperature", d.temperature, "> 0")
    _require(d.epochs_per_stage > 0, source, "distill.epochs_per_stage", d.epochs_per_stage, "> 0")
    if d.steps_per_stage is not None:
        _require(d.steps_per_stage >= 1, source, "distill.steps_per_stage", d.steps_per_stage, "an integer >= 1")
    if d.learning_rate is not None:
        _require(d.learning_rate > 0, source, "distill.learning_rate", d.learning_rate, "> 0")
    _require(len(set(d.methods)) == len(d.methods), source, "distill.methods", d.methods, "no repeated method")
    _require(d.chunk_size >= 1, source, "distill.chunk_size", d.chunk_size, "an integer >= 1")
    _require(d.cache_top_k >= 1, source, "distill.cache_top_k", d.cache_top_k, "an integer >= 1")
    if d.fused_loss == "liger":
        from distillkit_scd.liger_loss import check_liger_available

        try:
            check_liger_available()
        except ValueError as err:
            raise RecipeError(f"{source}: {err}") from None
    t = d.taid
    _require(0 <= t.t_start < t.t_end <= 1, source, "distill.taid.t_start",
             (t.t_start, t.t_end), "0 <= t_start < t_end <= 1")
    _require(0 < t.alpha <= 1, source, "distill.taid.alpha", t.alpha, "a number in (0, 1] (as TAIDState)")
    _require(0 <= t.beta < 1, source, "distill.taid.beta", t.beta, "a number in [0, 1)")
    _require(d.scd.probe_size >= 1, source, "distill.scd.probe_size", d.scd.probe_size, "an integer >= 1")
    _require(d.scd.top_k >= 0, source, "distill.scd.top_k", d.scd.top_k, "an integer >= 0 (0 = full)")
    e = r.evaluation
    if e.max_new_tokens is not None:
        _require(e.max_new_tokens >= 1, source, "evaluation.max_new_tokens", e.max_new_tokens, ">= 1")
    _require(e.batch_size >= 1, source, "evaluation.batch_size", e.batch_size, "an integer >= 1")
    if e.select_by == "validation" and r.task.options.get("validation_fraction", 0.1) == 0:
        raise RecipeError(f"{source}: evaluation.select_by: 'validation' selects checkpoints on the validation "
                          "split, but task.options.validation_fraction is 0; use select_by: test (the paper's "
                          "protocol) or a validation_fraction > 0 (the clean protocol)")
    la = r.launcher
    _require(la.num_processes >= 1, source, "launcher.num_processes", la.num_processes, "an integer >= 1")
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
