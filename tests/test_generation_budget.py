"""The generation budget: each task's default is the official toolkit's (JMED-LLM: 512 new tokens), a
verbose zero-shot answer is still parsed within it, and generation stops at the end-of-turn token."""

import torch

from distillkit_scd.config import recipe_from_dict
from distillkit_scd.evaluation.scoring import scoring_for
from distillkit_scd.evaluation.stage import generation_budget, score_model

JMED = ("jmmlu", "crade", "rrtnm", "smdis", "nrner")


def _recipe(task, **evaluation):
    return recipe_from_dict({"name": "b", "output_dir": "b", "models": {"teacher": "tiny:teacher",
                             "student": "tiny:student"}, "task": {"name": task}, "evaluation": evaluation})


def test_default_budget_is_the_official_toolkits():
    """JMED tasks generate up to 512 new tokens (JMED-LLM's `max_new_tokens=512`); the recipe overrides it."""
    assert {t: generation_budget(_recipe(t)) for t in JMED} == dict.fromkeys(JMED, 512)
    assert generation_budget(_recipe("crade", max_new_tokens=16)) == 16


class ScriptedModel(torch.nn.Module):
    """Writes a fixed token script (greedy decoding of a verbose model), honouring the budget and the stop
    ids `generate` passes; positions after a stop are padding, as transformers pads finished rows."""

    def __init__(self, script):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.script = script
        self.seen_stops = None

    def generate(self, input_ids, max_new_tokens, eos_token_id, pad_token_id, **kwargs):
        self.seen_stops = list(eos_token_id)
        new = []
        for token in self.script[:max_new_tokens]:
            new.append(token)
            if token in eos_token_id:
                break
        new += [pad_token_id] * (min(max_new_tokens, len(self.script)) - len(new))
        return torch.cat([input_ids, torch.tensor([new] * len(input_ids))], dim=1)


def test_verbose_zero_shot_answer_is_parsed_within_the_budget(tiny_tokenizer):
    """~60 tokens of reasoning, then the letter, end-of-turn, then text that must not be read: with the
    task's budget the answer is parsed (accuracy 1) and nothing after end-of-turn is kept; a budget of 8
    (the old default) cuts the answer off."""
    tok = tiny_tokenizer
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    verbose = tok.encode(" fever cough nausea rash headache fatigue" * 10, add_special_tokens=False)
    assert len(verbose) > 50 and not any(c in tok.decode(verbose) for c in "ABCDEF")
    script = [*verbose, *tok.encode(" C", add_special_tokens=False), eot, *tok.encode(" D", add_special_tokens=False)]
    split = {"messages": [[{"role": "user", "content": "question"}, {"role": "assistant", "content": "C"}]],
             "answer": ["C"], "id": ["q0"]}
    recipe = _recipe("crade")
    model = ScriptedModel(script)
    metrics, samples = score_model(model, tok, split, scoring_for("crade"), recipe, generation_budget(recipe))
    assert eot in model.seen_stops
    assert metrics["accuracy"] == 1.0 and samples[0]["prediction"] == "C"
    assert samples[0]["generation"].rstrip().endswith("C")  # stopped at end-of-turn: " D" never decoded
    metrics, samples = score_model(ScriptedModel(script), tok, split, scoring_for("crade"), recipe, 8)
    assert metrics["accuracy"] == 0.0 and samples[0]["prediction"] == "None"  # JMED's unparsed marker


def test_stop_ids_include_the_templates_end_of_turn(tiny_tokenizer):
    """Stop ids are the end-of-turn ids training labels end with (`formatting.end_of_turn_ids`)."""
    from distillkit_scd.data.formatting import end_of_turn_ids
    from distillkit_scd.evaluation.generation import stop_token_ids

    assert end_of_turn_ids(tiny_tokenizer) <= set(stop_token_ids(tiny_tokenizer))
