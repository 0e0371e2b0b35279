"""distillkit-scd: Scheduled Checkpoint Distillation for domain-specific LLMs.

The library follows one pipeline per task: domain SFT of a teacher (saving N checkpoints) and a
student, an Adaptive-Weighting table, then distillation with one of TD, TAID, CD, SCD or SCD+AW,
and evaluation with the official metrics. See README.md and DESIGN notes for the map.
"""

__version__ = "0.1.0"
