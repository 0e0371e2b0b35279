"""The run directory of a recipe: where each stage's artifact lives, and the inputs stages share.

Layout (see docs/CONTRACTS.md):
``sft/<role>/`` (trainer checkpoints + manifest.json), ``aw/``, ``distill/<method>/``,
``results/<row>/<task>.json``, ``report/``, ``stages/``, ``tiny_models/`` for `tiny:` model references.
"""

from __future__ import annotations

import logging
from pathlib import Path

from distillkit_scd.config import Recipe

logger = logging.getLogger(__name__)

class Workspace:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.root = Path(recipe.output_dir)

    def sft_dir(self, role: str) -> Path:
        return self.root / "sft" / role

    def distill_dir(self, method: str) -> Path:
        return self.root / "distill" / method

    def aw_dir(self) -> Path:
        return self.root / "aw"

    def results_path(self, row: str) -> Path:
        return self.root / "results" / row / f"{self.recipe.task.name}.json"

    def base_model(self, role: str) -> str:
        """The base model of `role`; `tiny:teacher` / `tiny:student` are built on the spot (no download),
        under the file lock of `models.refs.resolve_model_path` (every rank of a launch resolves them)."""
        from distillkit_scd.models.refs import resolve_model_path

        return resolve_model_path(self.recipe, role)

    def load_base(self, role: str):
        from distillkit_scd.models.loading import load_model

        m = self.recipe.models
        return load_model(self.base_model(role), m.dtype, m.trust_remote_code, m.attn_implementation)

    def tokenizer(self):
        """The student's tokenizer, checked against the teacher's (one vocabulary for token-level KD), its
        chat template's date pinned to `task.date_string`."""
        from distillkit_scd.data.formatting import pin_template_date
        from distillkit_scd.models.loading import check_vocab_compatible, load_tokenizer

        trc = self.recipe.models.trust_remote_code
        student = load_tokenizer(self.base_model("student"), trc)
        teacher = load_tokenizer(self.base_model("teacher"), trc)
        check_vocab_compatible(teacher, student, teacher_name=self.recipe.models.teacher,
                               student_name=self.recipe.models.student)
        return pin_template_date(student, self.recipe.task.date_string)

    def task_splits(self):
        from distillkit_scd.tasks import load_task

        t = self.recipe.task
        options = {"seed": self.recipe.seed, **t.options}
        return load_task(t.name, t.source, **options)

    def tokenized_splits(self, tokenizer):
        """(train, selection split) tokenised with assistant-only labels; truncation counts are logged.

        The selection split (`selection.selection_split`: validation, or test under the paper's protocol)
        is what training evaluates its loss on; None when it is empty.
        """
        from distillkit_scd.data.formatting import tokenize_dataset
        from distillkit_scd.evaluation.selection import selection_split

        splits = self.task_splits()
        train, report = tokenize_dataset(splits["train"], tokenizer, self.recipe.task.max_length, name="train")
        name = selection_split(self.recipe)
        val = None
        if len(splits[name]):
            val, _ = tokenize_dataset(splits[name], tokenizer, self.recipe.task.max_length, name=name)
        logger.info("data: %d train rows (%d prompts cut, %d dropped), %d %s rows", len(train),
                    len(report.truncated), len(report.dropped), 0 if val is None else len(val), name)
        return train, val


def save_resolved_recipe(recipe: Recipe, folder: Path) -> None:
    """Every artifact folder carries the resolved config that produced it."""
    from distillkit_scd.utils.atomic import atomic_write_text

    atomic_write_text(Path(folder) / "resolved_recipe.yaml", recipe.to_yaml())
