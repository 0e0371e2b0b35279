"""A corpus of malformed inputs: each fails fast, before training, with a message naming the field, file
or row and what was expected — never a bare traceback from deep inside a library."""

from __future__ import annotations

import copy
import json
import re

import pytest

from distillkit_scd.config import RecipeError, check_local_files, load_recipe, recipe_from_dict

BASE = {
    "name": "bad",
    "output_dir": "runs/bad",
    "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
    "task": {"name": "synthetic"},
}


def with_change(path: str, value):
    data = copy.deepcopy(BASE)
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()

RECIPE_CASES = [
    # (field changed, value, pattern the message must contain)
    ("distil", {"alpha": 0.5}, r"unknown key distil\b"),
    ("distill.alhpa", 0.5, r"unknown key distill\.alhpa"),
    ("optim.learning_rate", "fast", r"optim\.learning_rate: expected a number"),
    ("sft.num_checkpoints", 2.5, r"sft\.num_checkpoints: expected an integer"),
    ("sft.num_checkpoints", 0, r"sft\.num_checkpoints"),
    ("distill.alpha", 1.5, r"distill\.alpha: expected a number in \[0, 1\]"),
    ("distill.alpha", -0.1, r"distill\.alpha"),
    ("distill.temperature", 0, r"distill\.temperature"),
    ("distill.methods", ["kd"], r"distill\.methods\[0\]"),
    ("distill.methods", ["td", "td"], r"distill\.methods"),
    ("distill.taid.t_start", 0.9, r"distill\.taid"),  # with t_end below
    ("task.name", "pubmed", r"task\.name"),
    ("task.max_length", 4, r"task\.max_length"),
    ("optim.per_device_train_batch_size", 0, r"optim\.per_device_train_batch_size"),
    ("optim.warmup_ratio", 1.5, r"optim\.warmup_ratio"),
    ("training_args", {"output_dir": "x"}, r"training_args"),
    ("models.teacher", _DELETE, r"models\.teacher"),
    ("models", _DELETE, r"models"),
    ("sft.teacher.num_train_epochs", -1, r"sft\.teacher\.num_train_epochs"),
    ("distill.steps_per_stage", 0, r"distill\.steps_per_stage"),
    ("evaluation.select_by", "train", r"evaluation\.select_by"),
    ("task.options", {"validation_fraction": 0}, r"evaluation\.select_by: .validation. selects"),
]


@pytest.mark.parametrize("field,value,pattern", RECIPE_CASES, ids=[f"{c[0]}={c[1]!r}"[:40] for c in RECIPE_CASES])
def test_bad_recipe_fields_are_named(field, value, pattern):
    """Each bad recipe field raises RecipeError naming the source and the field path."""
    data = with_change(field, value)
    if field == "distill.taid.t_start":
        data["distill"]["taid"]["t_end"] = 0.5
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(data, source="bad.yaml")
    assert "bad.yaml" in str(err.value)
    assert re.search(pattern, str(err.value)), str(err.value)


def test_conflicting_precision_options(tmp_path):
    """fp16 mixed precision with bf16 weights under DeepSpeed is refused, naming both settings."""
    data = with_change("models.dtype", "bfloat16")
    data["launcher"] = {"mixed_precision": "fp16", "deepspeed_config": "recipes/deepspeed/zero3.json"}
    with pytest.raises(RecipeError, match="mixed_precision"):
        recipe_from_dict(data, "bad.yaml")


@pytest.mark.parametrize("text,pattern", [
    ("- just\n- a list\n", "expected a mapping at the top level"),
    ("name: [unclosed\n", "not valid YAML"),
], ids=["list-top-level", "invalid-yaml"])
def test_unreadable_recipe_files(tmp_path, text, pattern):
    """Malformed YAML files are refused with the file named."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=pattern) as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_non_utf8_recipe(tmp_path):
    """A recipe that is not UTF-8 names the file."""
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(RecipeError, match="UTF-8"):
        load_recipe(path)


def test_extends_cycle_and_missing_base(tmp_path):
    """`extends` cycles and missing base files are named."""
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(RecipeError, match="missing.yaml"):
        load_recipe(tmp_path / "c.yaml")


def test_bad_override_syntax(tmp_path):
    """--set without `=` is refused with the offending text."""
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(BASE))
    with pytest.raises(RecipeError, match="distill.alpha"):
        load_recipe(path, ["distill.alpha"])


def test_missing_local_teacher_checkpoint():
    """A local model path that does not exist is found by `validate`, before any launch."""
    recipe = recipe_from_dict(with_change("models.teacher", "./checkpoints/teacher-that-is-not-here"), "bad.yaml")
    with pytest.raises(RecipeError, match=r"models\.teacher: local path"):
        check_local_files(recipe, "bad.yaml")


def test_more_checkpoints_than_steps():
    """N checkpoints need at least N optimizer steps: refused before training, naming the field."""
    from distillkit_scd.training.sft import evenly_spaced_steps

    with pytest.raises(ValueError, match="sft.num_checkpoints"):
        evenly_spaced_steps(3, 5)


def test_unknown_training_args_key():
    """A training_args key TRL's SFTConfig lacks is refused with its name (no silent typo)."""
    from distillkit_scd.training.training_args import build_sft_config

    recipe = recipe_from_dict(with_change("training_args", {"gradient_checkpoint": True}), "bad.yaml")
    with pytest.raises(ValueError, match="training_args.gradient_checkpoint"):
        build_sft_config(recipe, "/tmp/x", 1e-4)


# ----------------------------------------------------------------------------------------------- data


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_dataset_missing_column(tiny_tokenizer):
    """A split without `messages` is refused naming the column."""
    from distillkit_scd.data.formatting import tokenize_dataset

    with pytest.raises(ValueError, match="messages"):
        tokenize_dataset(_dataset([{"id": "a", "text": "hi"}]), tiny_tokenizer, 64, name="train")


def test_dataset_empty_split(tiny_tokenizer):
    """An empty split is refused with its name."""
    from datasets import Dataset

    from distillkit_scd.data.formatting import tokenize_dataset

    empty = Dataset.from_dict({"id": [], "messages": []})
    with pytest.raises(ValueError, match="train"):
        tokenize_dataset(empty, tiny_tokenizer, 64, name="train")


def test_row_without_assistant_turn(tiny_tokenizer):
    """A row whose last turn is not the assistant's answer is refused naming the row."""
    from distillkit_scd.data.formatting import tokenize_dataset

    rows = [{"id": "q1", "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}]
    with pytest.raises(ValueError, match="q1"):
        tokenize_dataset(_dataset(rows), tiny_tokenizer, 64, name="train")


def test_answers_longer_than_max_length(tiny_tokenizer):
    """Rows whose answer cannot fit are dropped and counted; if none fit, the split is refused."""
    from distillkit_scd.data.formatting import tokenize_dataset

    long = {"id": "long", "messages": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "word " * 200}]}
    short = {"id": "short", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]}
    _, report = tokenize_dataset(_dataset([long, short]), tiny_tokenizer, 32, name="train")
    assert report.as_dict()["dropped"] == 1
    with pytest.raises(ValueError, match="max_length"):
        tokenize_dataset(_dataset([long]), tiny_tokenizer, 32, name="train")


def _jmed_root(tmp_path, text: bytes | str, name: str = "crade.csv"):
    root = tmp_path / "jmed_llm"
    root.mkdir()
    (root / "all").mkdir()
    path = root / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return root


def test_non_utf8_data_file(tmp_path):
    """A data file that is not UTF-8 is refused naming the file."""
    from distillkit_scd.tasks import load_task

    root = _jmed_root(tmp_path, b"tag,question,optionA,optionB,answer\nx,\xff\xfe,a,b,A\n")
    with pytest.raises(ValueError, match="crade.csv"):
        load_task("crade", str(root), pool="benchmark")


def test_jmed_row_with_bad_answer(tmp_path):
    """A multiple-choice row whose answer is not a letter is refused naming the file and row."""
    from distillkit_scd.tasks import load_task

    root = _jmed_root(tmp_path, "tag,question,optionA,optionB,answer\nx,q?,a,b,Z\n")
    with pytest.raises(ValueError, match=r"crade\.csv.*row"):
        load_task("crade", str(root), pool="benchmark")


def test_nrner_answer_not_a_list(tmp_path):
    """An NRNER gold answer that is not a list literal of strings is refused naming the row."""
    from distillkit_scd.tasks import load_task

    root = _jmed_root(tmp_path, "tag,question,answer\nd,q?,not a list\n", name="nrner.csv")
    with pytest.raises(ValueError, match=r"nrner\.csv.*row"):
        load_task("nrner", str(root), pool="benchmark")


def test_missing_data_files(tmp_path):
    """A data folder without the task's files names what it expected."""
    from distillkit_scd.tasks import load_task

    (tmp_path / "pubmedqa").mkdir()
    with pytest.raises(ValueError, match="ori_pqal.json|test_ground_truth.json"):
        load_task("pubmedqa", str(tmp_path / "pubmedqa"))


# --------------------------------------------------------------------------------------------- models


def test_vocabulary_mismatch(tiny_tokenizer):
    """Teacher and student tokenizers with different vocabularies are refused naming both."""
    from distillkit_scd.models.loading import build_tiny_tokenizer, check_vocab_compatible

    other = build_tiny_tokenizer(texts=["completely different corpus zzz qqq"] * 50, vocab_size=400)
    with pytest.raises(ValueError, match="teacher-x.*student-y|student-y.*teacher-x"):
        check_vocab_compatible(tiny_tokenizer, other, teacher_name="teacher-x", student_name="student-y")


def test_missing_tokenizer(tmp_path, tiny_pair):
    """A model folder without tokenizer files is refused naming the folder."""
    import shutil

    from distillkit_scd.models.loading import load_tokenizer

    folder = tmp_path / "model_only"
    folder.mkdir()
    shutil.copy(tiny_pair[1] / "config.json", folder / "config.json")
    with pytest.raises(ValueError, match="model_only"):
        load_tokenizer(str(folder))


def test_chat_template_without_generation_prompt(tmp_path, tiny_pair):
    """A chat template that ignores add_generation_prompt is refused (generation could not start)."""
    from distillkit_scd.models.loading import build_tiny_tokenizer, load_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}"
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="add_generation_prompt"):
        load_tokenizer(str(tmp_path / "tok"))


def test_aw_table_from_different_data():
    """An AW table computed on other rows is refused naming the unknown ids."""
    import torch

    from distillkit_scd.teachers.aw_table import AWTable

    table = AWTable(["a", "b"], torch.tensor([1.0, 2.0], dtype=torch.float64),
                    torch.tensor([[1.0], [1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="zz"):
        table.weights_for(["a", "zz"])


def test_nan_teacher_checkpoint_is_refused(tmp_path, tiny_pair):
    """A teacher checkpoint with NaN weights is refused at load, naming the file and tensor."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from distillkit_scd.models.loading import load_model
    from distillkit_scd.teachers.pool import load_weights_in_place

    bad = tmp_path / "nan_ckpt"
    shutil.copytree(tiny_pair[0], bad)
    weights = load_file(str(bad / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(bad / "model.safetensors"))
    model = load_model(str(tiny_pair[0]))
    with pytest.raises(ValueError, match="NaN"):
        load_weights_in_place(model, bad)
