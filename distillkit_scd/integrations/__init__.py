"""Integrations with other distillation frameworks; each imports its framework lazily, so this package
imports without them. `distillkit`: arcee-ai DistillKit (see docs/distillkit.md)."""
