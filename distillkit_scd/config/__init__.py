"""The recipe: typed schema (`config/schema.py`) and its loading and checks (`config/loading.py`).

A recipe is YAML that maps onto the dataclasses of `config/schema.py`. Unknown keys and wrong types are
errors that name the file and the field path (``recipes/x.yaml: distill.alpha: expected a number in
[0, 1], got 1.5``). Import everything recipe-related from here: ``from distillkit_scd.config import
Recipe, load_recipe``.
"""

from __future__ import annotations

from distillkit_scd.config.loading import (
    _build,
    check_local_files,
    check_output_dir,
    check_recipe,
    is_local_path,
    load_recipe,
    recipe_from_dict,
)
from distillkit_scd.config.schema import (
    METHODS,
    DistillConfig,
    Divergence,
    EvaluationConfig,
    LauncherConfig,
    Method,
    ModelsConfig,
    OptimConfig,
    Recipe,
    RecipeError,
    RoleSFTConfig,
    SCDConfig,
    SFTConfig,
    TAIDConfig,
    TaskConfig,
)

__all__ = [
    "METHODS", "DistillConfig", "Divergence", "EvaluationConfig", "LauncherConfig", "Method", "ModelsConfig",
    "OptimConfig", "Recipe", "RecipeError", "RoleSFTConfig", "SCDConfig", "SFTConfig", "TAIDConfig", "TaskConfig",
    "_build", "check_local_files", "check_output_dir", "check_recipe", "is_local_path", "load_recipe", "recipe_from_dict",
]
