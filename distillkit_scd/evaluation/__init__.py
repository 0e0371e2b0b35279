"""Evaluation: answer parsing and metrics (`metrics`), scoring dispatch, generation, checkpoint selection,
results files, and the evaluation stage (`stage`). The package re-exports the contract names only."""

from distillkit_scd.evaluation.metrics import ner_f1, parse_choice, parse_ner

__all__ = ["ner_f1", "parse_choice", "parse_ner"]
