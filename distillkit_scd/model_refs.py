"""Model references in a recipe: a Hub id, a local folder, or `tiny:teacher` / `tiny:student`.

`tiny:<which>` names a tiny Llama built on the spot by `models.make_tiny_pair` (no download) into
`OUT/tiny_models/<which>/`, seeded by the recipe's `seed`; both tiny models share one tokenizer. The
quickstart and the tests use them. Any stage that needs a base model's folder calls
`resolve_model_path(recipe, role)`.
"""

from __future__ import annotations

from pathlib import Path

TINY_PREFIX = "tiny:"
TINY_KINDS = ("teacher", "student")


def tiny_kind(ref: str) -> str | None:
    """`"teacher"`/`"student"` for a `tiny:` reference, None for anything else.

    Raises:
        ValueError: for `tiny:<other>`.
    """
    if not ref.startswith(TINY_PREFIX):
        return None
    kind = ref[len(TINY_PREFIX):]
    if kind not in TINY_KINDS:
        raise ValueError(f"model reference {ref!r}: expected tiny:teacher or tiny:student")
    return kind


def tiny_models_dir(recipe) -> Path:
    return Path(recipe.output_dir) / "tiny_models"


def resolve_model_path(recipe, role: str, build: bool = True) -> str:
    """The base model of `role` ("teacher" or "student") as something `from_pretrained` accepts.

    Args:
        recipe: a `config.Recipe`.
        role: which of `recipe.models` to resolve.
        build: build the tiny pair when a `tiny:` reference is not on disk yet (False: only the path).

    Raises:
        ValueError: for an unknown role or a bad `tiny:` reference.
    """
    if role not in ("teacher", "student"):
        raise ValueError(f"role: expected 'teacher' or 'student', got {role!r}")
    ref = getattr(recipe.models, role)
    try:
        kind = tiny_kind(ref)
    except ValueError as err:
        raise ValueError(f"models.{role}: {err}") from None
    if kind is None:
        return ref
    folder = tiny_models_dir(recipe) / kind
    if build:
        from distillkit_scd.models import make_tiny_pair

        teacher_dir, student_dir = make_tiny_pair(tiny_models_dir(recipe), seed=recipe.seed)
        folder = teacher_dir if kind == "teacher" else student_dir
    return str(folder)
