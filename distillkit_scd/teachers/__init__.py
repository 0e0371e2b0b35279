"""The teacher side of a run: the checkpoint pool (`pool`), the Adaptive-Weighting table (`aw_table`) and the teacher-signal cache (`signal_cache`)."""
