"""Every recipe shipped in the repository loads, and its resolved form is pinned by a snapshot.

Recipes are found recursively (`rglob`), so a new file cannot escape the check. Snapshots live in
`tests/recipe_snapshots/`; after an intended change regenerate them with
`UPDATE_RECIPE_SNAPSHOTS=1 pytest tests/test_recipes.py` and review the diff.
"""

import json
import os
from pathlib import Path

import pytest
import yaml

from distillkit_scd.config import check_local_files, load_recipe

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = Path(__file__).resolve().parent / "recipe_snapshots"
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.relative_to(ROOT).parts)
RECIPES += sorted((ROOT / "distillkit_scd" / "recipes").rglob("*.yaml"))
ACCELERATE = sorted((ROOT / "recipes" / "accelerate").rglob("*.yaml"))
DEEPSPEED = sorted((ROOT / "recipes" / "deepspeed").rglob("*.json"))


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_recipes_are_found():
    """The glob sees the quickstart, the paper base and the six task recipes (guards a silent empty glob)."""
    names = {_id(p) for p in RECIPES}
    assert {"recipes/quickstart.yaml", "recipes/paper/base.yaml", "distillkit_scd/recipes/quickstart.yaml"} <= names
    assert len([n for n in names if n.startswith("recipes/paper/")]) >= 7
    assert ACCELERATE and DEEPSPEED


@pytest.mark.parametrize("path", RECIPES + ACCELERATE, ids=_id)
def test_starts_with_launch_command_comment(path):
    """Every YAML opens with a comment that gives the exact command to launch it."""
    head = path.read_text(encoding="utf-8").split("\n\n")[0]
    assert head.startswith("#")
    assert "distillkit-scd " in head or "accelerate launch" in head


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_validates_and_matches_snapshot(path, monkeypatch):
    """Typed load + semantic checks + local files pass (from the repo root); the resolved recipe is
    deterministic and equals its reviewed snapshot."""
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(path)
    check_local_files(recipe, str(path))
    text = recipe.to_yaml()
    assert load_recipe(path).to_yaml() == text
    snap = SNAPSHOTS / (_id(path).replace("/", "__"))
    if os.environ.get("UPDATE_RECIPE_SNAPSHOTS"):
        snap.parent.mkdir(exist_ok=True)
        snap.write_text(text, encoding="utf-8")
    assert snap.is_file(), f"no snapshot for {_id(path)}; run with UPDATE_RECIPE_SNAPSHOTS=1 and review it"
    assert text == snap.read_text(encoding="utf-8"), f"{_id(path)} resolves differently from {snap.name}"


def test_paper_base_has_the_papers_hyperparameters(monkeypatch):
    """8B → 3B, AdamW 0.9/0.95, clip 1, cosine, warm-up 0.1, 512 tokens, global batch 8, T = 2 epochs,
    bf16, ZeRO-3 — shared by every task recipe, which changes only task, run dir and learning rate."""
    monkeypatch.chdir(ROOT)
    base = load_recipe("recipes/paper/base.yaml")
    o, la = base.optim, base.launcher
    assert base.models.teacher == "meta-llama/Llama-3.1-8B-Instruct"
    assert base.models.student == "meta-llama/Llama-3.2-3B-Instruct"
    assert (o.adam_beta1, o.adam_beta2, o.max_grad_norm, o.lr_scheduler_type, o.warmup_ratio) == \
        (0.9, 0.95, 1.0, "cosine", 0.1)
    assert base.task.max_length == 512 and base.distill.epochs_per_stage == 2.0
    assert o.per_device_train_batch_size * o.gradient_accumulation_steps * la.num_processes == 8
    assert base.models.dtype == "bfloat16" and la.mixed_precision == "bf16"
    assert json.loads(Path(la.deepspeed_config).read_text())["zero_optimization"]["stage"] == 3
    base_dict = base.to_dict()
    for path in RECIPES:
        rel = _id(path)
        if not rel.startswith("recipes/paper/") or rel.endswith("base.yaml"):
            continue
        r = load_recipe(path).to_dict()
        g = r["optim"]["per_device_train_batch_size"] * r["optim"]["gradient_accumulation_steps"] * \
            r["launcher"]["num_processes"]
        assert g == 8, f"{rel}: global batch {g}"
        for section in ("models", "sft", "distill", "evaluation"):
            assert r[section] == base_dict[section], f"{rel}: {section} differs from base.yaml"


@pytest.mark.parametrize("path", ACCELERATE, ids=_id)
def test_accelerate_configs(path, monkeypatch):
    """Accelerate configs point at an existing DeepSpeed JSON and leave precision to it (accelerate
    refuses mixed_precision beside a DeepSpeed config file)."""
    monkeypatch.chdir(ROOT)
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert cfg["distributed_type"] == "DEEPSPEED" and cfg["num_processes"] >= 1
    ds_file = Path(cfg["deepspeed_config"]["deepspeed_config_file"])
    assert ds_file.is_file()
    assert "mixed_precision" not in cfg and set(cfg["deepspeed_config"]) <= {"deepspeed_config_file", "zero3_init_flag"}


@pytest.mark.parametrize("path", DEEPSPEED, ids=_id)
def test_deepspeed_configs(path):
    """DeepSpeed JSONs are ZeRO-3 and leave batch, accumulation, clipping and precision to the trainer."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    assert cfg["zero_optimization"]["stage"] == 3
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert cfg[key] == "auto"
    assert cfg["bf16"]["enabled"] == "auto"
    offload = cfg["zero_optimization"].get("offload_optimizer", {}).get("device", "none")
    assert (offload == "cpu") == ("offload" in path.name)
