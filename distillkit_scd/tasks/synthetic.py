"""`synthetic`: a generated domain task that needs no download (quickstart and tests).

Four families of rules (the row's `tag`) of different difficulty, so a wider teacher can learn some
sub-domains better while a small student is not hopeless — the situation AW is designed for:

- ``lookup``  memorise a fixed 20-entry table: "Which code is assigned to <term>?" → ``K17`` (memorisation)
- ``choice``  pick the member of a category among three options → ``B``            (knowledge + format)
- ``sum``     (a + b) mod 10 for two digits → ``7``                                (arithmetic rule)
- ``reverse`` reverse three letters → ``C A F``                                    (sequence rule; easy)

Scoring: answers are short strings scored by **exact match** of the stripped generation (evaluation kind
"exact"); the ``choice`` family's answer is a single letter, so `parse_choice` would also apply to it.
Rows are a pure function of the seed; train and test draw from independent streams, so test rows may
repeat train rows (the table and the rules are the "domain knowledge" to learn, not held-out facts).

Measured with the tiny pair (`models.loading.make_tiny_pair`, seed 0; plain AdamW, batch 16, num_train 800,
160 test rows = 40 per family, teacher lr 1e-3, student lr 3e-3; greedy test accuracy per family):

    epochs  model    lookup  choice  sum   reverse   train time (1 CPU thread)
    12      teacher  1.00    0.25    0.20  1.00      61 s
    12      student  1.00    0.35    0.07  1.00      11 s
    30      teacher  1.00    0.55    0.50  1.00      161 s
    30      student  1.00    0.45    0.33  1.00      31 s

So ``lookup``/``reverse`` show the student is not hopeless, and with enough steps the teacher pulls ahead
on ``choice`` and ``sum``; at quickstart budgets the gap is within noise (±0.15 on 40 rows).
(A 50-entry lookup table was tried: 0.82 vs 0.80 at 12 epochs, no clearer gap, so the table stays at 20.)
"""

from __future__ import annotations

import random

from datasets import DatasetDict

from .common import carve_validation, to_dataset_dict

SYSTEM = "You are a clinical coding assistant. Reply with the answer only."

TERMS = [
    "fever", "cough", "nausea", "rash", "headache", "fatigue", "dizziness", "edema", "anemia", "asthma",
    "insomnia", "tremor", "angina", "sepsis", "gout", "vertigo", "otitis", "eczema", "colitis", "myalgia",
]
CATEGORIES = {
    "drug": ["aspirin", "insulin", "heparin", "morphine", "warfarin", "codeine"],
    "organ": ["liver", "kidney", "heart", "lung", "spleen", "pancreas"],
    "test": ["biopsy", "x-ray", "ultrasound", "endoscopy", "ecg", "mri"],
}
LETTERS = "ABCDEF"


def _code_table(seed: int = 1234) -> dict[str, str]:
    """The fixed term → code table (the 'domain knowledge'); independent of the data seed."""
    r = random.Random(seed)
    codes = r.sample(range(10, 100), len(TERMS))
    return {term: f"K{code}" for term, code in zip(TERMS, codes)}


def _row(r: random.Random, index: int, split: str) -> dict:
    tag = ("lookup", "choice", "sum", "reverse")[index % 4]
    if tag == "lookup":
        term = r.choice(TERMS)
        question, answer = f"Which code is assigned to {term}?", _code_table()[term]
    elif tag == "choice":
        category = r.choice(sorted(CATEGORIES))
        right = r.choice(CATEGORIES[category])
        others = [w for c, ws in sorted(CATEGORIES.items()) if c != category for w in ws]
        options = [right, *r.sample(others, 2)]
        r.shuffle(options)
        lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        question, answer = f"Which option is a {category}?\n{lines}", LETTERS[options.index(right)]
    elif tag == "sum":
        a, b = r.randrange(10), r.randrange(10)
        question, answer = f"What is ({a} + {b}) mod 10?", str((a + b) % 10)
    else:
        letters = r.sample(LETTERS, 3)
        question, answer = f"Reverse the letters: {' '.join(letters)}", " ".join(reversed(letters))
    return {
        "id": f"syn-{split}-{index}",
        "tag": tag,
        "question": question,
        "answer": answer,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
    }


def generate_rows(num: int, seed: int, split: str) -> list[dict]:
    r = random.Random(f"{seed}:{split}")
    return [_row(r, i, split) for i in range(num)]


def chat_jsonl(num: int, seed: int = 0) -> str:
    """`num` rows as JSON lines in the `chat` task's format (`id`, `tag`, `messages`): the example data of
    `distillkit-scd data example` and `recipes/examples/own_data.yaml`."""
    import json

    if not isinstance(num, int) or num < 1:
        raise ValueError(f"data example: --rows: expected a positive integer, got {num!r}")
    rows = generate_rows(num, seed, "example")
    return "".join(json.dumps({"id": r["id"], "tag": r["tag"], "messages": r["messages"]}) + "\n" for r in rows)


def corpus_for_tokenizer() -> list[str]:
    """Text covering every synthetic string, for training the tiny tokenizer."""
    rows = generate_rows(400, seed=0, split="tok")
    return [f"system {SYSTEM} user {r['question']} assistant {r['answer']}" for r in rows]


def build(source: str | None = None, num_train: int = 600, num_test: int = 100, validation_fraction: float = 0.1,
          seed: int = 42, **unknown) -> DatasetDict:
    """Generate the task. `source` must be None: the generator is the source."""
    if unknown:
        raise ValueError(f"task synthetic: unknown option(s) {sorted(unknown)}; allowed: num_train, num_test, "
                         "validation_fraction, seed")
    if source is not None:
        raise ValueError(f"task synthetic: task.source must be unset (got {source!r}); the data is generated")
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"task synthetic: {name}: expected a positive integer, got {value!r}")
    train = generate_rows(num_train, seed, "train")
    test = generate_rows(num_test, seed, "test")
    train, val = carve_validation(train, validation_fraction, seed)
    info = {"task": "synthetic", "definition": f"generated, seed {seed}, {num_train} train / {num_test} test, "
            f"validation {validation_fraction} of train"}
    return to_dataset_dict(train, val, test, info)
