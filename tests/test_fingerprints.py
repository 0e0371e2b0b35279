"""Stage fingerprints are derived: every recipe field is classified once (`config.schema.FIELD_STAGES` or
`RESULT_NEUTRAL`), a changed field changes exactly the fingerprints of the stages it affects and their
dependants, and the data's content and the models' identity count too."""

from __future__ import annotations

import dataclasses

import pytest

from distillkit_scd.config import recipe_from_dict
from distillkit_scd.config.methods import METHODS
from distillkit_scd.config.schema import FIELD_STAGES, RESULT_NEUTRAL, Recipe
from distillkit_scd.pipeline import fingerprints as fp
from distillkit_scd.pipeline.run import build_stages


def _recipe(**distill):
    return recipe_from_dict({"name": "t", "output_dir": "/tmp/unused", "models": {"teacher": "tiny:teacher",
                             "student": "tiny:student"}, "task": {"name": "synthetic"}, "distill": distill})


IDENT = {"data": "d", "models.teacher": "t", "models.student": "s"}


def _changed(a: Recipe, b: Recipe, ident_b=IDENT) -> list[str]:
    """Stages whose fingerprint differs between two recipes (same stage list)."""
    fa, fb = fp.fingerprints(a, build_stages(a), IDENT), fp.fingerprints(b, build_stages(b), ident_b)
    return [name for name in fa if fa[name] != fb[name]]


def test_every_recipe_field_is_classified_exactly_once():
    """A new recipe field must say which stages it affects (or why none): this fails until it does."""
    assert fp.unclassified_fields() == [], ("add each to config_schema.FIELD_STAGES (the stages it affects) or "
                                            "RESULT_NEUTRAL (why it changes no result)")
    fields = set(fp.recipe_fields())
    assert set(FIELD_STAGES) <= fields and set(RESULT_NEUTRAL) <= fields, "entries for fields that do not exist"
    assert not set(FIELD_STAGES) & set(RESULT_NEUTRAL)


def test_an_unclassified_field_is_caught():
    """The check above can fail: a schema with one more field reports it, and stage inputs refuse it."""

    @dataclasses.dataclass
    class Extended(Recipe):
        new_knob: int = 0

    assert fp.unclassified_fields(Extended) == ["new_knob"]


def test_fused_loss_reruns_the_distill_stages():
    """`distill.fused_loss` (once missing from the hand-written lists) changes every distillation stage, its
    evaluation and the report, nothing upstream. Built with dataclasses.replace: no Liger install needed."""
    a = _recipe()
    b = dataclasses.replace(a, distill=dataclasses.replace(a.distill, fused_loss="liger"))
    expected = [x for m in METHODS for x in (f"distill-{m}", f"eval-{m}")] + ["report"]
    assert sorted(_changed(a, b)) == sorted(expected)


@pytest.mark.parametrize("field, value, expected", [
    ("sft.num_checkpoints", 2, "sft-student"),  # the student saves N checkpoints too (its p(best))
    ("distill.chunk_size", 64, "aw-table"),  # the AW table's losses are summed in chunks
    ("distill.compile_loss", True, "distill-td"),  # numerics at float tolerance: in the distill fingerprint
    ("optim.logging_steps", 3, None),  # declared result-neutral
])
def test_field_reaches_its_stages(field, value, expected):
    """Fields reach the stages that read them (and neutral ones none)."""
    a = _recipe()
    section, name = field.split(".")
    b = dataclasses.replace(a, **{section: dataclasses.replace(getattr(a, section), **{name: value})})
    changed = _changed(a, b)
    assert (expected in changed) if expected else changed == []


def test_data_and_model_identity_enter_model_stages_only():
    """A different data hash or model re-runs every stage that runs a model; the report follows from them."""
    a = _recipe()
    stages = build_stages(a)
    for key in IDENT:
        changed = _changed(a, a, {**IDENT, key: "other"})
        assert changed == [s.name for s in stages], key  # every stage runs a model or follows one


def test_data_identity_is_the_rows_content(monkeypatch):
    """The data hash changes when a row's text changes, not when the same rows are loaded again."""
    from datasets import Dataset, DatasetDict

    rows = [{"id": "1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    loaded = {"rows": rows}
    monkeypatch.setattr("distillkit_scd.tasks.load_task",
                        lambda *a, **k: DatasetDict({"train": Dataset.from_list(loaded["rows"])}))
    recipe = _recipe()
    first = fp.data_identity(recipe)
    assert fp.data_identity(recipe) == first
    loaded["rows"] = [{**rows[0], "messages": [rows[0]["messages"][0], {"role": "assistant", "content": "b"}]}]
    assert fp.data_identity(recipe) != first
    hub = dataclasses.replace(recipe, task=dataclasses.replace(recipe.task, source="org/some-dataset"))
    assert fp.data_identity(hub) == "hub:org/some-dataset"


def test_model_identity_is_path_and_weights(tmp_path):
    """A local model is its path + weights/config hash: editing its config changes it; `tiny:` and Hub ids
    are taken as named (a Hub id with the cached commit when there is one)."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(b"weights")
    first = fp.model_identity(str(folder))
    assert first.startswith(str(folder.resolve()) + " sha256:")
    (folder / "config.json").write_text('{"hidden_size": 16}')
    assert fp.model_identity(str(folder)) != first
    assert fp.model_identity("tiny:teacher") == "tiny:teacher"
    assert fp.model_identity("no-such-org/no-such-model-xyz").startswith("hub:no-such-org/no-such-model-xyz")
