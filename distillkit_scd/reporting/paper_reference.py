"""The paper's Table 1 as data (Feng et al., arXiv 2601.10114; Llama-3.1-8B-Instruct → Llama-3.2-3B-Instruct).

Columns follow `report.COLUMNS`. The paper's Avg is the unweighted mean of the seven numbers of a row —
JMMLU, PubmedQA, NRNER exact, NRNER partial, CRADE, RRTNM, SMDIS — so NRNER enters it twice (once per F1
variant). Check: teacher SFT (0.547 + 0.792 + 0.667 + 0.932 + 0.813 + 0.677 + 0.985) / 7 = 0.7733 → 0.773;
every row reproduces its printed Avg to within rounding (tested in tests/test_report.py).
"""

from __future__ import annotations

PAPER_COLUMNS = ("JMMLU", "PubmedQA", "NRNER exact", "NRNER partial", "CRADE", "RRTNM", "SMDIS")

_ROWS = {  # row: (JMMLU, PubmedQA, NRNER exact, NRNER partial, CRADE, RRTNM, SMDIS, Avg as printed)
    "teacher_zero_shot": (0.453, 0.752, 0.251, 0.443, 0.144, 0.554, 0.637, 0.462),
    "teacher_sft": (0.547, 0.792, 0.667, 0.932, 0.813, 0.677, 0.985, 0.773),
    "student_zero_shot": (0.358, 0.702, 0.247, 0.476, 0.092, 0.200, 0.255, 0.333),
    "student_sft": (0.394, 0.738, 0.533, 0.806, 0.629, 0.508, 0.976, 0.655),
    "td": (0.453, 0.750, 0.676, 0.894, 0.804, 0.523, 0.986, 0.727),
    "taid": (0.504, 0.762, 0.659, 0.866, 0.804, 0.523, 0.988, 0.729),
    "cd": (0.482, 0.754, 0.684, 0.883, 0.801, 0.585, 0.986, 0.739),
    "scd": (0.474, 0.756, 0.686, 0.909, 0.819, 0.538, 0.986, 0.742),
    "scd_aw": (0.523, 0.766, 0.711, 0.944, 0.807, 0.600, 0.986, 0.763),
}

PAPER_TABLE: dict[str, dict[str, float]] = {
    row: {**dict(zip(PAPER_COLUMNS, values[:-1])), "Avg": values[-1]} for row, values in _ROWS.items()
}
"""row → {column → the paper's number, "Avg" → the paper's printed average}."""

PAPER_AVG_DISCREPANCIES = {"scd": 0.7383}
"""Rows whose printed Avg is not the mean of their seven numbers: row → that mean (4 decimals)."""
