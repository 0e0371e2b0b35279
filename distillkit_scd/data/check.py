"""Is a recipe's task data there and readable? Checked by `validate` and before `run` (dry runs included).

A local source (a path, or the task's default folder) is loaded the way the stages load it, so a missing
file, a file that does not parse or a malformed row is reported now, naming the file (and row), with the
command that fetches the paper's data. A Hub dataset id is not checked offline: the note says so.
"""

from __future__ import annotations

from pathlib import Path

from distillkit_scd.config import Recipe, RecipeError

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def is_hub_id(source: str | None) -> bool:
    """A `task.source` that names a Hub dataset: not on disk, not path-like, not a data file name."""
    if source is None:
        return False
    path = Path(source).expanduser()
    return not (path.exists() or source.startswith((".", "/", "~")) or path.suffix.lower() in DATA_SUFFIXES)


def check_data(recipe: Recipe, source: str = "<recipe>") -> str:
    """Load the recipe's task data (local) or note that a Hub id was not checked; returns a one-line note.

    Raises:
        RecipeError: the data is missing or unreadable; the message names the path and what to run.
    """
    from distillkit_scd.tasks import get_task, load_task
    from distillkit_scd.tasks.common import DATA_ENV

    t = recipe.task
    if is_hub_id(t.source):
        return (f"task.source {t.source!r} is a Hub dataset id: not checked offline (the first stage downloads "
                "it; gated datasets need `hf auth login` or HF_TOKEN)")
    try:
        splits = load_task(t.name, t.source, **{"seed": recipe.seed, **t.options})
    except ValueError as err:
        fetch = get_task(t.name).fetch
        hint = (f"; to get the paper's data run `distillkit-scd data fetch {fetch} --to DIR`, then set "
                f"{DATA_ENV}=DIR (unset: data/) or task.source: DIR/<its folder>" if fetch else "")
        raise RecipeError(f"{source}: task data: {err}{hint}") from None
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    return f"task {t.name}: data {getattr(splits, 'split_info', {}).get('source', 'generated')} ({sizes})"
