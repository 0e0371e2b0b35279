"""Training arguments come from the recipe, not from TRL's defaults (which turn gradient checkpointing on)."""

import dataclasses
from pathlib import Path

import pytest

from distillkit_scd.config import load_recipe
from distillkit_scd.training.training_args import build_sft_config, gradient_checkpointing

ROOT = Path(__file__).resolve().parents[1]
ON_CPU = ["launcher.mixed_precision='no'", "launcher.deepspeed_config=null"]  # the paper's bf16 + ZeRO-3 need a GPU


def _ckpt_fields(args) -> dict:
    names = ("gradient_checkpointing", "activation_checkpointing")
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name in names}


@pytest.mark.parametrize("recipe_path, overrides, want", [
    ("distillkit_scd/recipes/quickstart.yaml", [], False),  # the quickstart: off (TRL's default would be on)
    ("recipes/paper/pubmedqa.yaml", ON_CPU, True),  # the paper recipes say true
    ("distillkit_scd/recipes/quickstart.yaml", ["training_args.gradient_checkpointing=true"], True),
    ("recipes/paper/pubmedqa.yaml", ON_CPU + ["training_args.gradient_checkpointing=false"], False),
])
def test_gradient_checkpointing_is_what_the_recipe_says(tmp_path, recipe_path, overrides, want):
    recipe = load_recipe(ROOT / recipe_path, overrides)
    assert gradient_checkpointing(recipe) is want
    args = build_sft_config(recipe, tmp_path, 1e-4)
    fields = _ckpt_fields(args)
    assert fields and all(v is want for v in fields.values()), fields  # both names agree where both exist
