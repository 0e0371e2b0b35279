"""Schedules: which teacher checkpoint each step uses (`teacher_checkpoints`), SCD's run-time choice
(`scd_selector`), TAID's interpolation state (`taid_state`) and the learning rate (`lr`). The package
re-exports the contract names only, and imports no torch (the CLI's `--help` and `validate` stay light)."""

from distillkit_scd.schedules.teacher_checkpoints import progressive_schedule, select_checkpoint

__all__ = ["progressive_schedule", "select_checkpoint"]
