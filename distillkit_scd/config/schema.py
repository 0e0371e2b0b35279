"""The recipe schema: one typed dataclass per recipe section, each field documented once, here, and
checked by its section's `__post_init__` (a `FieldError`: field, expected, got; recipe loading adds the
file and section path). Checks across sections (task names, DeepSpeed vs. `skip`, …) are in
`config.loading.check_recipe`.

YAML loading, `extends`, `--set` overrides and the checks live in `config/loading.py`; import both
through `distillkit_scd.config`.

ADDING A FIELD: also give it a line in `FIELD_STAGES` (the pipeline stages whose results it changes; their
fingerprints then include it, so changing it re-runs them and their dependants) or in `RESULT_NEUTRAL`
(with why it changes no result), at the end of this file. tests/test_fingerprints.py fails until it has one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from distillkit_scd.config.methods import METHODS
from distillkit_scd.config.stages import MODEL_STAGES, STAGES
from distillkit_scd.schedules.taid_state import check_taid

Method = Literal[tuple(METHODS)]  # the method names of `methods.METHODS`, in the paper's order
Divergence = Literal["forward_kl", "reverse_kl"]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and field path."""


class FieldError(ValueError):
    """A section's own check failed (raised by its `__post_init__`): `field` relative to the section and
    `detail` (`expected …, got …`). Recipe loading names the file and the section path in front of it."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field}: {detail}")
        self.field, self.detail = field, detail


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise FieldError(field, f"expected {expected}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Schema. Each field is documented once, here.
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelsConfig:
    """Which models to distil.

    teacher (`str`): Hub id or local folder of the teacher's base model (SFT starts from it), or
        `tiny:teacher` / `tiny:student`: a tiny Llama built on the spot (see `models/refs.py`).
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

    def __post_init__(self) -> None:
        for role in ("teacher", "student"):  # `tiny:` references: see models/refs.py
            ref = getattr(self, role)
            _check(not ref.startswith("tiny:") or ref in ("tiny:teacher", "tiny:student"), role, ref,
                   "a Hub id, a local folder, tiny:teacher or tiny:student")



@dataclass
class TaskConfig:
    """The domain task.

    name (`str`): registered task: pubmedqa, jmmlu, crade, rrtnm, smdis, nrner, synthetic, or chat (your
        own data; `tasks/chat.py`, metric chosen by `options.metric`, see `evaluation/chat_metrics.py`).
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

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, "max_length", self.max_length, "an integer >= 8")



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

    def __post_init__(self) -> None:
        _check(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", self.per_device_train_batch_size,
               "an integer >= 1")
        _check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", self.gradient_accumulation_steps,
               "an integer >= 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        for name in ("adam_beta1", "adam_beta2"):
            _check(0 <= getattr(self, name) < 1, name, getattr(self, name), "a number in [0, 1)")
        _check(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, ">= 0 (0 disables)")
        _check(self.max_nonfinite_steps >= 0, "max_nonfinite_steps", self.max_nonfinite_steps, "an integer >= 0")



@dataclass
class RoleSFTConfig:
    """SFT of one model (teacher or student).

    num_train_epochs (`float`, defaults to `3`): passes over the train split.
    learning_rate (`float`, *optional*): overrides `optim.learning_rate` for this model.
    """

    num_train_epochs: float = 3.0
    learning_rate: float | None = None

    def __post_init__(self) -> None:
        _check(self.num_train_epochs > 0, "num_train_epochs", self.num_train_epochs, "> 0")
        _check(self.learning_rate is None or self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")



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

    def __post_init__(self) -> None:
        _check(self.num_checkpoints >= 1, "num_checkpoints", self.num_checkpoints, "N >= 1")



@dataclass
class TAIDConfig:
    """TAID's adaptive interpolation (official defaults, Shing et al. 2025).

    t_start (`float`, defaults to `0.4`), t_end (`float`, defaults to `1.0`): interpolation range.
    alpha (`float`, defaults to `5e-4`): step size of the adaptive update.
    beta (`float`, defaults to `0.99`): momentum of the relative loss change.
    ce_weight (`float`, *optional*): weight of CE in TAID's loss, (1 − w)·TAID + w·CE. Unset: 1 − `distill.alpha`,
        the paper's compound loss with the hyper-parameters every row shares (ours, and the paper recipes':
        the paper states one loss for all methods); 0: the official TAID code (distil ratio 1.0, the TAID
        term alone). TAID's t adapts to the TAID term either way.
    """

    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99
    ce_weight: float | None = None

    def __post_init__(self) -> None:
        _check(self.ce_weight is None or 0 <= self.ce_weight <= 1, "ce_weight", self.ce_weight,
               "a number in [0, 1] (or unset)")
        try:  # the one rule for TAID's settings (TAIDState and the DistillKit section use it too)
            check_taid(self.t_start, self.t_end, self.alpha, self.beta, where="")
        except ValueError as err:
            field, detail = str(err).lstrip(".").split(": ", 1)
            raise FieldError(field, detail) from None



@dataclass
class SCDConfig:
    """Scheduled checkpoint selection.

    probe_size (`int`, defaults to `64`): train samples in the fixed probe set for the KL terms.
    top_k (`int`, defaults to `0`): cache each checkpoint's probe log-probs as top-k plus a tail
        bucket; 0 caches the full distribution (exact; fine for small vocabularies or probe sets).
    """

    probe_size: int = 64
    top_k: int = 0

    def __post_init__(self) -> None:
        _check(self.probe_size >= 1, "probe_size", self.probe_size, "an integer >= 1")
        _check(self.top_k >= 0, "top_k", self.top_k, "an integer >= 0 (0 = full)")



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
    compile_loss (`"auto"` or `bool`, defaults to `"auto"`): run the built-in loss's per-chunk element-wise
        work through torch.compile (`compiled_kernel`; compiled once per vocabulary size and divergence, a
        one-time cost of seconds to a minute; equal to the eager kernel to float rounding). auto = on CUDA
        only, so CPU runs never wait for a compile; falls back to eager, with one log line, if compiling fails.
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
    compile_loss: Literal["auto"] | bool = "auto"
    taid: TAIDConfig = field(default_factory=TAIDConfig)
    scd: SCDConfig = field(default_factory=SCDConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.alpha <= 1, "alpha", self.alpha, "a number in [0, 1]")
        _check(self.temperature > 0, "temperature", self.temperature, "> 0")
        _check(self.epochs_per_stage > 0, "epochs_per_stage", self.epochs_per_stage, "> 0")
        _check(self.steps_per_stage is None or self.steps_per_stage >= 1, "steps_per_stage", self.steps_per_stage,
               "an integer >= 1")
        _check(self.learning_rate is None or self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(len(set(self.methods)) == len(self.methods), "methods", self.methods, "no repeated method")
        _check(self.chunk_size >= 1, "chunk_size", self.chunk_size, "an integer >= 1")
        _check(self.cache_top_k >= 1, "cache_top_k", self.cache_top_k, "an integer >= 1")



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

    def __post_init__(self) -> None:
        _check(self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, ">= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")



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

    def __post_init__(self) -> None:
        _check(self.num_processes >= 1, "num_processes", self.num_processes, "an integer >= 1")



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
# What each field affects: the pipeline derives every stage's fingerprint from this (`pipeline/fingerprints.py`).
# Values are stage-name patterns (fnmatch: `eval-*` is every evaluation), or a function of the recipe
# giving them. A stage also depends on its upstream stages, so list only the stages that read a field.
# --------------------------------------------------------------------------------------------------

_TRAIN = ("sft-*", "distill-*")
_DISTILL = ("distill-*",)


def _methods(pick) -> tuple[str, ...]:
    return tuple(STAGES["distill"].stage_name(name) for name, spec in METHODS.items() if pick(spec))


def _if_scored(recipe) -> tuple[str, ...]:
    """SFT picks p(best) by generation under `sft.select_by: val_score`, so generation settings count."""
    return ("eval-*", "sft-*") if recipe.sft.select_by == "val_score" else ("eval-*",)


FIELD_STAGES: dict = {
    "name": ("report",),
    "seed": MODEL_STAGES,
    **{f"models.{k}": MODEL_STAGES for k in ("teacher", "student", "dtype", "trust_remote_code",
                                             "attn_implementation")},
    "task.name": (*MODEL_STAGES, "report"),
    **{f"task.{k}": MODEL_STAGES for k in ("source", "options", "max_length", "date_string")},
    **{f"optim.{k}": _TRAIN for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                                     "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "lr_scheduler_type",
                                     "warmup_ratio", "nonfinite_loss", "max_nonfinite_steps")},
    "sft.num_checkpoints": ("sft-*",),
    "sft.select_by": ("sft-*",),
    **{f"sft.{role}.{k}": (f"sft-{role}",) for role in ("teacher", "student") for k in ("num_train_epochs",
                                                                                        "learning_rate")},
    **{f"distill.{k}": _DISTILL for k in ("alpha", "temperature", "divergence", "epochs_per_stage", "steps_per_stage",
                                         "learning_rate", "reset_optimizer", "lr_schedule", "fused_loss",
                                         "compile_loss")},
    "distill.chunk_size": (*_DISTILL, "signals", "aw-table"),
    "distill.teacher_signal": (*_DISTILL, "aw-table"),
    "distill.cache_top_k": (*_DISTILL, "signals"),
    **{f"distill.taid.{k}": _methods(lambda spec: spec.taid) for k in ("t_start", "t_end", "alpha", "beta",
                                                                       "ce_weight")},
    **{f"distill.scd.{k}": _methods(lambda spec: spec.schedule == "scd") for k in ("probe_size", "top_k")},
    "evaluation.max_new_tokens": _if_scored,
    "evaluation.batch_size": lambda recipe: (*_if_scored(recipe), "signals", "aw-table"),
    "evaluation.select_by": ("eval-*", "sft-*"),
    **{f"launcher.{k}": _TRAIN for k in ("num_processes", "accelerate_config", "deepspeed_config",
                                        "mixed_precision")},
    "training_args": _TRAIN,
}
"""Recipe field (dotted) → the stages whose results it changes."""

RESULT_NEUTRAL: dict[str, str] = {
    "output_dir": "where the run is written, not what it computes",
    "optim.logging_steps": "how often a log line is written; no update depends on it",
    "distill.methods": "which distillation stages exist; each one's own settings are in its fingerprint",
    "evaluation.zero_shot": "whether the zero-shot evaluations exist; they read no training output",
}
"""Recipe fields that change no result, with why (they enter no fingerprint)."""
