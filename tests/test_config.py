"""Recipe loading: every bad recipe is refused with the file and the field path in the message."""

from pathlib import Path

import pytest
import yaml

from distillkit_scd.config import METHODS, RecipeError, check_local_files, load_recipe, recipe_from_dict

MINIMAL = {"name": "t", "output_dir": "runs/t", "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
           "task": {"name": "synthetic"}}


def write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def test_minimal_recipe_gets_documented_defaults(tmp_path):
    """Unset sections take the schema defaults (the paper's optimiser, all five methods)."""
    r = load_recipe(write(tmp_path, "r.yaml", MINIMAL))
    assert r.distill.methods == list(METHODS)
    assert (r.optim.adam_beta1, r.optim.adam_beta2, r.optim.max_grad_norm) == (0.9, 0.95, 1.0)
    assert r.launcher.num_processes == 1


@pytest.mark.parametrize("patch, needle", [
    ({"distill": {"alpah": 0.5}}, "unknown key distill.alpah"),
    ({"optim": {"learning_rate": "fast"}}, "optim.learning_rate: expected a number, got 'fast'"),
    ({"distill": {"alpha": 1.5}}, "distill.alpha: expected a number in [0, 1], got 1.5"),
    ({"sft": {"num_checkpoints": 0}}, "sft.num_checkpoints"),
    ({"distill": {"methods": ["td", "xx"]}}, "distill.methods[1]"),
    ({"task": {"name": "nope"}}, "task.name"),
    ({"optim": {"per_device_train_batch_size": True}}, "optim.per_device_train_batch_size: expected an integer"),
    ({"sft": {"teacher": {"num_train_epochs": -1}}}, "sft.teacher.num_train_epochs"),
    ({"launcher": {"num_processes": 0}}, "launcher.num_processes"),
    ({"training_args": {"seed": 1}}, "training_args"),
    ({"distill": {"compile_loss": "yes"}}, "distill.compile_loss: expected one of 'auto' or true/false, got 'yes'"),
])
def test_bad_field_is_named(tmp_path, patch, needle):
    """Unknown keys, wrong types and bad ranges name the file and the dotted field path."""
    data = {**MINIMAL, **patch}
    path = write(tmp_path, "bad.yaml", data)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_missing_required_key(tmp_path):
    """A recipe without `models` says which key is missing."""
    data = {k: v for k, v in MINIMAL.items() if k != "models"}
    with pytest.raises(RecipeError, match="missing required key models"):
        load_recipe(write(tmp_path, "r.yaml", data))


def test_extends_chain_merges_and_reports_the_leaf_file(tmp_path):
    """`extends` merges mappings key by key through a chain; an error in a base names the loaded file."""
    write(tmp_path, "a.yaml", {**MINIMAL, "distill": {"alpha": 0.2, "temperature": 2.0}})
    write(tmp_path, "b.yaml", {"extends": "a.yaml", "distill": {"alpha": 0.3}})
    c = write(tmp_path, "c.yaml", {"extends": "b.yaml", "name": "c"})
    r = load_recipe(c)
    assert (r.name, r.distill.alpha, r.distill.temperature) == ("c", 0.3, 2.0)
    write(tmp_path, "bad_base.yaml", {**MINIMAL, "optim": {"lr": 1}})
    leaf = write(tmp_path, "leaf.yaml", {"extends": "bad_base.yaml"})
    with pytest.raises(RecipeError, match=r"leaf\.yaml: unknown key optim\.lr"):
        load_recipe(leaf)


def test_extends_cycle_is_refused(tmp_path):
    """a → b → a is an error naming the cycle, not a recursion crash."""
    write(tmp_path, "a.yaml", {"extends": "b.yaml"})
    write(tmp_path, "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_extends_missing_file(tmp_path):
    """A base that does not exist is named."""
    path = write(tmp_path, "r.yaml", {"extends": "nowhere.yaml"})
    with pytest.raises(RecipeError, match="nowhere.yaml: recipe file not found"):
        load_recipe(path)


def test_set_overrides_are_typed_and_checked(tmp_path):
    """`--set a.b=v` parses v as YAML, creates nested keys, and is checked like the file."""
    path = write(tmp_path, "r.yaml", MINIMAL)
    r = load_recipe(path, ["distill.alpha=0.25", "distill.methods=[td, scd]", "distill.scd.probe_size=8"])
    assert (r.distill.alpha, r.distill.methods, r.distill.scd.probe_size) == (0.25, ["td", "scd"], 8)
    with pytest.raises(RecipeError, match="distill.alpha: expected a number in"):
        load_recipe(path, ["distill.alpha=2"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(path, ["distill.alpha"])
    with pytest.raises(RecipeError, match="unknown key distill.alhpa"):
        load_recipe(path, ["distill.alhpa=0.1"])
    with pytest.raises(RecipeError, match="name is not a section"):
        load_recipe(path, ["name.x=1"])


def test_invalid_yaml_and_non_mapping(tmp_path):
    """Broken YAML and a top-level list are refused with the file name."""
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "broken.yaml", "a: [1, 2\n"))
    with pytest.raises(RecipeError, match="expected a mapping at the top level"):
        load_recipe(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_to_dict_round_trips():
    """The resolved dict rebuilds the same recipe (what OUT/resolved_recipe.yaml relies on)."""
    r = recipe_from_dict(MINIMAL)
    assert recipe_from_dict(yaml.safe_load(r.to_yaml())) == r


def test_local_files_must_exist(tmp_path):
    """A local model path or launcher config that is missing is named before anything launches."""
    r = recipe_from_dict({**MINIMAL, "launcher": {"deepspeed_config": str(tmp_path / "ds.json")}})
    with pytest.raises(RecipeError, match="launcher.deepspeed_config: local path"):
        check_local_files(r)
    r = recipe_from_dict({**MINIMAL, "models": {"teacher": "./no/such/model", "student": "tiny:student"}})
    with pytest.raises(RecipeError, match="models.teacher"):
        check_local_files(r)


def test_bad_tiny_reference_is_named(tmp_path):
    """`tiny:` accepts only teacher and student."""
    path = write(tmp_path, "r.yaml", {**MINIMAL, "models": {"teacher": "tiny:giant", "student": "tiny:student"}})
    with pytest.raises(RecipeError, match="models.teacher: expected .*tiny:teacher or tiny:student, got 'tiny:giant'"):
        load_recipe(path)


def test_sections_check_their_own_values():
    """Validation at the field: a section refuses a bad value when built (any caller, not only recipe
    loading), and recipe loading names the file and the section path in front of the same message."""
    from distillkit_scd.config.schema import FieldError, OptimConfig

    with pytest.raises(FieldError, match=r"^learning_rate: expected > 0, got 0$"):
        OptimConfig(learning_rate=0)
    with pytest.raises(RecipeError, match=r"^<recipe>: optim\.learning_rate: expected > 0, got 0\.0$"):
        recipe_from_dict({"name": "t", "output_dir": "/tmp/unused", "task": {"name": "synthetic"},
                          "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
                          "optim": {"learning_rate": 0}})
