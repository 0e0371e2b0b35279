"""Orchestration: the resumable run (`run`), plan and time estimate, sweep, the run directory (`workspace`) and stage fingerprints."""
