"""Model references in a recipe: a Hub id, a local folder, or `tiny:teacher` / `tiny:student`.

`tiny:<which>` names a tiny Llama built on the spot by `models.loading.make_tiny_pair` (no download) into
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
        folder = _build_tiny_pair(recipe)[TINY_KINDS.index(kind)]
    return str(folder)


def _build_tiny_pair(recipe) -> tuple[Path, Path]:
    """Build (or reuse) the tiny pair under an exclusive file lock (`filelock`, a dependency of
    huggingface_hub): the ranks of an `accelerate launch` all resolve the same references at start-up,
    and only the first may write the folders."""
    from filelock import FileLock

    from distillkit_scd.models.loading import make_tiny_pair

    root = tiny_models_dir(recipe)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        return make_tiny_pair(root, seed=recipe.seed)


def prepare_models(recipe) -> None:
    """Build every `tiny:` model the recipe names (no-op otherwise); call before any process loads them."""
    for role in ("teacher", "student"):
        if tiny_kind(getattr(recipe.models, role)):
            resolve_model_path(recipe, role)
