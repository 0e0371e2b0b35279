"""Run arcee-ai DistillKit with our losses, our teacher schedule and fixes for four of its defects.

    python -m distillkit_scd.integrations.distillkit CONFIG.yaml
    accelerate launch -m distillkit_scd.integrations.distillkit CONFIG.yaml

CONFIG is a DistillKit YAML plus an optional top-level `distillkit_scd:` section (our settings, strictly
validated: unknown keys are errors naming the field path). In its `loss_functions:` list DistillKit then
also accepts `scd_aw_kl`, `taid` and `reverse_kl`. Everything is wired at runtime in this entry point only:
DistillKit's enum of loss names and its loss-class list are extended, and `distillkit.main` is given our
trainer subclass for this call; DistillKit's files are never edited and `distillkit CONFIG` is unchanged.
See docs/distillkit.md. This module imports without DistillKit installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distillkit_scd.config import RecipeError, _build
from distillkit_scd.config.methods import SCHEDULES
from distillkit_scd.integrations.distillkit_checks import (
    MARKER,
    SECTION,
    check_checkpoint_shapes,
    check_loss_entries,
    check_top_level,
    plain_run_hint,
    validate_manifest,
)
from distillkit_scd.schedules.taid_state import check_taid

logger = logging.getLogger(__name__)

TESTED_VERSIONS = ("1.0.0",)
"""DistillKit versions whose trainer, loss interface and config our patches were written against."""

LOSS_NAMES = {"scd_aw_kl": "SCD_AW_KL", "taid": "TAID", "reverse_kl": "REVERSE_KL"}
"""Loss names we add to DistillKit's `LossFunction` enum → member names."""


# --------------------------------------------------------------------------------------------------
# The `distillkit_scd:` section.
# --------------------------------------------------------------------------------------------------


@dataclass
class ScheduleSettings:
    """Teacher checkpoint schedule: in-place swaps of DistillKit's online teacher every T steps.

    method (`str`, defaults to `"none"`): none (DistillKit's teacher throughout), fixed (p(best) of the
        manifest: TD), cd (p(1), …, p(N), one per stage) or scd (SCD's argmin at each stage start).
    manifest (`str`, *optional*): the teacher SFT's `manifest.json` (or its folder); required unless none.
    steps_per_stage (`int`, *optional*): T in optimizer steps; required unless none.
    reset_optimizer (`bool`, defaults to `True`): fresh AdamW moments every stage (paper).
    lr_schedule (`str`, defaults to `"global"`): global: DistillKit's one warm-up + decay over the whole run
        (the literal reading of the paper's "cosine decay with warmup", as our pipeline's default);
        per_stage (ours): the schedule restarts every stage.
    probe_size (`int`, defaults to `64`): SCD: train rows in the fixed probe set.
    probe_seed (`int`, defaults to `42`): SCD: which rows.
    top_k (`int`, defaults to `0`): SCD: cache probe log-probs as top-k + tail; 0 caches them in full.
    chunk_size (`int`, defaults to `1024`): SCD: label positions per logits chunk.
    """

    method: Literal[("none", *SCHEDULES)] = "none"  # the teacher schedules of `methods.SCHEDULES`
    manifest: str | None = None
    steps_per_stage: int | None = None
    reset_optimizer: bool = True
    lr_schedule: Literal["global", "per_stage"] = "global"
    probe_size: int = 64
    probe_seed: int = 42
    top_k: int = 0
    chunk_size: int = 1024


@dataclass
class TAIDSettings:
    """TAID's adaptive interpolation for the `taid` loss (official defaults, Shing et al. 2025). How much CE is
    mixed in is DistillKit's business: the weights of the `taid` and `cross_entropy` entries.

    t_start (`float`, defaults to `0.4`), t_end (`float`, defaults to `1.0`): interpolation range.
    alpha (`float`, defaults to `5e-4`): step size of the adaptive update.
    beta (`float`, defaults to `0.99`): momentum of the relative loss change.
    """

    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99


@dataclass
class AWSettings:
    """Where `scd_aw_kl` takes each sample's AW from.

    source (`str`, defaults to `"table"`): table: the paper's static AW, L_S and L_T^(j) computed once before
        distillation from the SFT student (`model:`) and each teacher checkpoint (`distillkit-scd aw-table
        CONFIG` writes it); online (ours): from the current student and teacher on each batch.
    table (`str`, *optional*): the table's `aw_table.json` (or its folder); defaults to `OUTPUT_PATH/aw`.
    """

    source: Literal["table", "online"] = "table"
    table: str | None = None


@dataclass
class IntegrationSettings:
    """The `distillkit_scd:` section of a DistillKit YAML.

    labels (`str`, defaults to `"assistant"`): assistant: loss (CE and every distillation term) only on
        assistant turns of `messages` / `conversations` rows and on the completion of prompt/completion rows
        (tokenised by us, before DistillKit's trainer sees them); all: DistillKit's own behaviour, every token.
    taid (`TAIDSettings`): t_start, t_end, alpha, beta of the `taid` loss (official defaults).
    schedule (`ScheduleSettings`): the teacher checkpoint schedule (CD / SCD).
    aw (`AWSettings`): static (paper) or online AW for `scd_aw_kl`.
    """

    labels: Literal["assistant", "all"] = "assistant"
    taid: TAIDSettings = field(default_factory=TAIDSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    aw: AWSettings = field(default_factory=AWSettings)


def _fail(source: str, path: str, value: Any, expected: str) -> None:
    raise RecipeError(f"{source}: {path}: expected {expected}, got {value!r}")


def parse_settings(section: Any, source: str = "<config>", check_files: bool = True) -> IntegrationSettings:
    """Validate the `distillkit_scd:` section (None → defaults); `check_files=False` skips the manifest's
    content (for `distillkit-teacher`, which writes it).

    Raises:
        RecipeError: unknown keys, wrong types or bad values, naming the file and field path.
    """
    settings = _build(IntegrationSettings, {} if section is None else section, path=SECTION, source=source)
    t = settings.taid
    try:  # the one rule for TAID's settings (the recipe's distill.taid and TAIDState use it too)
        check_taid(t.t_start, t.t_end, t.alpha, t.beta, where=f"{SECTION}.taid")
    except ValueError as err:
        raise RecipeError(f"{source}: {err}") from None
    s = settings.schedule
    where = f"{SECTION}.schedule"
    if s.method != "none":
        if s.manifest is None:
            _fail(source, f"{where}.manifest", None, f"the teacher's manifest.json for method {s.method}")
        if check_files:
            validate_manifest(s.manifest, f"{source}: {where}.manifest")
        if s.steps_per_stage is None or s.steps_per_stage < 1:
            _fail(source, f"{where}.steps_per_stage", s.steps_per_stage, f"an integer >= 1 for method {s.method}")
    for name, minimum in (("probe_size", 1), ("top_k", 0), ("chunk_size", 1)):
        if getattr(s, name) < minimum:
            _fail(source, f"{where}.{name}", getattr(s, name), f"an integer >= {minimum}")
    return settings


# --------------------------------------------------------------------------------------------------
# Version guard and registration.
# --------------------------------------------------------------------------------------------------


class DistillKitUnavailable(RuntimeError):
    """DistillKit is missing or of a version our integration does not support."""


def distillkit_version() -> str:
    """Installed DistillKit version (package metadata; DistillKit 1.0.0 has no `__version__`).

    Raises:
        DistillKitUnavailable: when DistillKit is not installed.
    """
    try:
        import distillkit
    except ImportError as err:
        raise DistillKitUnavailable("DistillKit is not installed (it is not on PyPI): git clone "
                                    "https://github.com/arcee-ai/DistillKit && pip install ./DistillKit") from err
    version = getattr(distillkit, "__version__", None)
    return version or importlib.metadata.version("distillkit")


def check_distillkit_version(version: str | None = None) -> str:
    """Refuse DistillKit versions our patches were not written against.

    Raises:
        DistillKitUnavailable: naming the installed and the supported versions.
    """
    version = version or distillkit_version()
    if version not in TESTED_VERSIONS:
        raise DistillKitUnavailable(
            f"distillkit {version} is installed; distillkit_scd's DistillKit integration supports "
            f"{', '.join(TESTED_VERSIONS)} (it subclasses DistillKit's trainer and extends its loss enum, "
            "which may differ in other versions). Install a supported version, or use our own pipeline "
            "(`distillkit-scd run RECIPE`)."
        )
    return version


def _add_enum_member(enum_cls, member_name: str, value: str) -> None:
    """Add a member to a `str` Enum at runtime (Python has no public API for it); idempotent."""
    if value in enum_cls._value2member_map_:
        return
    member = str.__new__(enum_cls, value)
    member._name_, member._value_ = member_name, value
    type.__setattr__(enum_cls, member_name, member)  # attribute access (bypasses EnumType's guard)
    enum_cls._member_map_[member_name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(member_name)


def register() -> None:
    """Make our loss names usable in DistillKit's `loss_functions:` (this process only; idempotent).

    Raises:
        DistillKitUnavailable: DistillKit missing or of an unsupported version.
    """
    check_distillkit_version()
    from distillkit import configuration

    from distillkit_scd.integrations.distillkit_fixes import register_loss_classes

    for value, member in LOSS_NAMES.items():
        _add_enum_member(configuration.LossFunction, member, value)
    # pydantic compiled the enum's validator when the models were defined: rebuild them with the new members.
    configuration.LossFunctionConfig.model_rebuild(force=True)
    configuration.DistillationRunConfig.model_rebuild(force=True)
    register_loss_classes()


def check_compatible(run_config, settings: IntegrationSettings, raw_section: dict | None,
                     source: str = "<config>", check_files: bool = True) -> None:
    """Cross-checks between DistillKit's config and ours (done before any model is loaded): loss names vs
    teacher kind, the manifest's checkpoint folders and shapes against the teacher, the AW table."""
    from distillkit.configuration import TeacherModelConfig

    names = [lf.function.value for lf in run_config.loss_functions]
    online_dense = isinstance(run_config.teacher, TeacherModelConfig) and run_config.teacher.top_k is None
    for i, name in enumerate(names):
        if name in LOSS_NAMES and not online_dense:
            _fail(source, f"loss_functions[{i}].function", name,
                  "a DistillKit loss, or an online teacher without top_k (teacher: {kind: hf, path: ...}) "
                  "since this loss needs the teacher's full logits")
    if "scd_aw_kl" in names and len(names) > 1:
        _fail(source, "loss_functions", names, "scd_aw_kl alone (it already mixes KL and CE per sample)")
    for key, loss in (("taid", "taid"), ("aw", "scd_aw_kl")):
        if raw_section and key in raw_section and loss not in names:
            _fail(source, f"{SECTION}.{key}", raw_section[key], f"no {key} settings unless loss_functions uses {loss}")
    if run_config.training_args.get("assistant_only_loss"):
        _fail(source, "training_args.assistant_only_loss", True,
              f"not set: TRL's option fails on DistillKit's pre-rendered text; {SECTION}.labels: assistant "
              "(the default) puts the loss on assistant tokens only")
    for split in ("train_dataset", "eval_dataset"):
        ds = getattr(run_config.dataset, split)
        if getattr(ds, "disk_path", None) and not Path(ds.disk_path).exists():
            _fail(source, f"dataset.{split}.disk_path", ds.disk_path, "an existing dataset folder (save_to_disk)")
    sched = settings.schedule
    if sched.method != "none" and not isinstance(run_config.teacher, TeacherModelConfig):
        _fail(source, f"{SECTION}.schedule.method", sched.method,
              "none unless the teacher is online (teacher.kind: hf): checkpoints swap into the live teacher")
    if not check_files:
        return
    pool = None
    if sched.method != "none":
        from distillkit_scd.teachers.pool import CheckpointPool

        where = f"{source}: {SECTION}.schedule.manifest"
        try:
            pool = CheckpointPool(sched.manifest)
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from None
        check_checkpoint_shapes(pool, run_config.teacher.path, where)
    if "scd_aw_kl" in names and settings.aw.source == "table":
        from distillkit_scd.integrations.distillkit_aw import check_table

        check_table(aw_table_path(run_config, settings), pool, run_config, source)


def aw_table_path(run_config, settings: IntegrationSettings) -> Path:
    """The AW table `scd_aw_kl` reads (and `aw-table CONFIG` writes): `aw.table`, else OUTPUT_PATH/aw."""
    return Path(settings.aw.table) if settings.aw.table else Path(run_config.output_path) / "aw"


@contextlib.contextmanager
def patched_trainer(settings: IntegrationSettings, run_config=None):
    """`distillkit.main` builds our trainer subclass (with `settings` and, for static AW, the AW table)
    inside this block; restored after."""
    import distillkit.main as dk_main

    from distillkit_scd.integrations.distillkit_fixes import SCDDistillationTrainer

    original = dk_main.DistillationTrainer
    names = [lf.function.value for lf in run_config.loss_functions] if run_config is not None else []
    aw_table = None
    if "scd_aw_kl" in names and settings.aw.source == "table":
        aw_table = aw_table_path(run_config, settings)

    def make_trainer(*args, **kwargs):
        return SCDDistillationTrainer(*args, settings=settings, aw_table=aw_table, **kwargs)

    dk_main.DistillationTrainer = make_trainer
    try:
        yield
    finally:
        dk_main.DistillationTrainer = original


# --------------------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------------------


def load_config(path: str | Path, check_files: bool = True):
    """Read a DistillKit YAML with our section → (DistillKit `DistillationRunConfig`, settings, YAML text).

    `check_files=False` leaves out the manifest, checkpoints and AW table (commands that write them).

    Raises:
        RecipeError: one line naming the file and key: a near miss of our section's name, an unknown option
            in one of our loss entries, our section invalid (manifest included), a bad combination, or
            DistillKit's own schema refusing its part.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    # Our checks first: they need neither DistillKit nor any model.
    check_top_level(data, str(path))
    check_loss_entries(data, LOSS_NAMES, None, str(path))
    raw_section = data.pop(SECTION, None)
    settings = parse_settings(raw_section, source=str(path), check_files=check_files)
    register()
    from distillkit.configuration import DistillationRunConfig, LossFunctionConfig
    from pydantic import ValidationError

    check_loss_entries(data, LOSS_NAMES, set(LossFunctionConfig.model_fields), str(path))  # warnings
    try:
        run_config = DistillationRunConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "<top level>"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise RecipeError(f"{path}: {loc}: {first['msg']} (DistillKit's schema){more}") from None
    check_compatible(run_config, settings, raw_section if isinstance(raw_section, dict) else None, str(path),
                     check_files)
    return run_config, settings, text


def uses_ours(run_config, raw_section) -> bool:
    """True when plain `distillkit` could not run this config as meant (our section or loss names)."""
    return bool(raw_section) or any(lf.function.value in LOSS_NAMES for lf in run_config.loss_functions)


def run(path: str | Path) -> None:
    """Train as `distillkit CONFIG` does, with our losses, schedule, data labelling and fixes."""
    from distillkit_scd.integrations.distillkit_data import patched_data, prepared_path_for
    from distillkit_scd.utils.atomic import atomic_write_json
    from distillkit_scd.utils.log import is_main_process

    run_config, settings, text = load_config(path)
    import distillkit.main as dk_main

    if is_main_process():  # one hint, one marker (other processes would race rank 0 to the marker)
        raw = (yaml.safe_load(text) or {}).get(SECTION)
        hint = plain_run_hint(run_config.output_path, uses_ours(run_config, raw))
        if hint:
            print(hint, file=sys.stderr)
        out = Path(run_config.output_path)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / MARKER, {"config": str(path), "distillkit": distillkit_version(),
                                         "settings": dataclasses.asdict(settings)})
    logger.info("distillkit_scd: DistillKit %s, losses %s, schedule %s, labels %s", distillkit_version(),
                [lf.function.value for lf in run_config.loss_functions], settings.schedule.method, settings.labels)
    prepared_path_for(run_config, settings.labels)
    with patched_trainer(settings, run_config), patched_data(settings.labels):
        dk_main.do_distill(run_config, config_source=text)


def main(argv: list[str] | None = None) -> int:
    """`python -m distillkit_scd.integrations.distillkit CONFIG [-v]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="distillkit-scd distillkit", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="DistillKit YAML, optionally with a distillkit_scd: section")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)])
    try:
        run(args.config)
    except (RecipeError, DistillKitUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)  # the command's answer, not a log line
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
