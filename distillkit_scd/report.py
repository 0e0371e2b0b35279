"""Table 1 (Markdown + CSV, ours beside the paper's) and the figures (3: SCD decisions, 4: AW histograms,
5: per-sample teacher − student score difference).

Average, as the paper computes it: the unweighted mean of the seven numbers of a row — JMMLU, PubMedQA,
NRNER exact, NRNER partial, CRADE, RRTNM, SMDIS (NRNER counts twice). Checked against the paper:
teacher SFT (0.547+0.792+0.667+0.932+0.813+0.677+0.985)/7 = 0.773. Our average runs over the columns
present in the run (one task per run directory; `write_report` accepts several run directories).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

from distillkit_scd.evaluate import ROWS, load_results
from distillkit_scd.evaluation import PRIMARY_METRICS

logger = logging.getLogger(__name__)

ROW_NAMES = {
    "teacher_zero_shot": "Teacher zero-shot", "teacher_sft": "Teacher SFT",
    "student_zero_shot": "Student zero-shot", "student_sft": "Student SFT",
    "td": "TD", "taid": "TAID", "cd": "CD", "scd": "SCD", "scd_aw": "SCD w/ AW",
}
ROW_ORDER = ("teacher_zero_shot", "teacher_sft", "student_zero_shot", "student_sft", "td", "taid", "cd", "scd",
             "scd_aw")
TASK_COLUMNS = {  # task → [(column name, metric key)]
    "jmmlu": [("JMMLU", "accuracy")], "pubmedqa": [("PubmedQA", "accuracy")],
    "nrner": [("NRNER exact", "exact_f1"), ("NRNER partial", "partial_f1")],
    "crade": [("CRADE", "accuracy")], "rrtnm": [("RRTNM", "accuracy")], "smdis": [("SMDIS", "accuracy")],
    "synthetic": [("synthetic", "accuracy")],
}

# The paper's Table 1 (arXiv 2601.10114), columns as TASK_COLUMNS.
PAPER_TABLE = {
    "teacher_zero_shot": {"JMMLU": 0.453, "PubmedQA": 0.752, "NRNER exact": 0.251, "NRNER partial": 0.443,
                          "CRADE": 0.144, "RRTNM": 0.554, "SMDIS": 0.637, "Avg": 0.462},
    "teacher_sft": {"JMMLU": 0.547, "PubmedQA": 0.792, "NRNER exact": 0.667, "NRNER partial": 0.932,
                    "CRADE": 0.813, "RRTNM": 0.677, "SMDIS": 0.985, "Avg": 0.773},
    "student_zero_shot": {"JMMLU": 0.358, "PubmedQA": 0.702, "NRNER exact": 0.247, "NRNER partial": 0.476,
                          "CRADE": 0.092, "RRTNM": 0.200, "SMDIS": 0.255, "Avg": 0.333},
    "student_sft": {"JMMLU": 0.394, "PubmedQA": 0.738, "NRNER exact": 0.533, "NRNER partial": 0.806,
                    "CRADE": 0.629, "RRTNM": 0.508, "SMDIS": 0.976, "Avg": 0.655},
    "td": {"JMMLU": 0.453, "PubmedQA": 0.750, "NRNER exact": 0.676, "NRNER partial": 0.894, "CRADE": 0.804,
           "RRTNM": 0.523, "SMDIS": 0.986, "Avg": 0.727},
    "taid": {"JMMLU": 0.504, "PubmedQA": 0.762, "NRNER exact": 0.659, "NRNER partial": 0.866, "CRADE": 0.804,
             "RRTNM": 0.523, "SMDIS": 0.988, "Avg": 0.729},
    "cd": {"JMMLU": 0.482, "PubmedQA": 0.754, "NRNER exact": 0.684, "NRNER partial": 0.883, "CRADE": 0.801,
           "RRTNM": 0.585, "SMDIS": 0.986, "Avg": 0.739},
    "scd": {"JMMLU": 0.474, "PubmedQA": 0.756, "NRNER exact": 0.686, "NRNER partial": 0.909, "CRADE": 0.819,
            "RRTNM": 0.538, "SMDIS": 0.986, "Avg": 0.742},
    "scd_aw": {"JMMLU": 0.523, "PubmedQA": 0.766, "NRNER exact": 0.711, "NRNER partial": 0.944, "CRADE": 0.807,
               "RRTNM": 0.600, "SMDIS": 0.986, "Avg": 0.763},
}
PAPER_COLUMNS = ["JMMLU", "PubmedQA", "NRNER exact", "NRNER partial", "CRADE", "RRTNM", "SMDIS"]


def row_average(values: dict[str, float]) -> float | None:
    """Mean of the row's numbers (NRNER exact and partial count as two), as the paper's Avg."""
    nums = [v for v in values.values() if v is not None]
    return sum(nums) / len(nums) if nums else None


def collect(run_dirs) -> tuple[list[str], dict[str, dict[str, float]], dict[str, dict]]:
    """Read `results/<row>/<task>.json` from each run dir → (columns, table[row][column], raw results)."""
    columns: list[str] = []
    table: dict[str, dict[str, float]] = {}
    raw: dict[str, dict] = {}
    for run_dir in map(Path, run_dirs):
        for row in ROWS:
            for path in sorted((run_dir / "results" / row).glob("*.json")):
                data = load_results(path)
                raw[f"{row}/{data['task']}"] = data
                for column, key in TASK_COLUMNS[data["task"]]:
                    if column not in columns:
                        columns.append(column)
                    # Recomputed from per-sample records, so the table is checkable against them.
                    scores = [s["scores"][key] for s in data["samples"]]
                    table.setdefault(row, {})[column] = sum(scores) / len(scores)
    order = [c for cols in TASK_COLUMNS.values() for c, _ in cols]
    columns.sort(key=order.index)
    return columns, table, raw


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def render_markdown(columns, table, with_paper: bool = True) -> str:
    lines = ["| Method | " + " | ".join(columns) + " | Avg |", "|---" * (len(columns) + 2) + "|"]
    for row in ROW_ORDER:
        if row not in table:
            continue
        values = {c: table[row].get(c) for c in columns}
        lines.append(f"| {ROW_NAMES[row]} | " + " | ".join(_fmt(values[c]) for c in columns)
                     + f" | {_fmt(row_average(values))} |")
    text = "\n".join(lines)
    text += ("\n\nAvg: unweighted mean of the row's columns, NRNER exact and partial counted separately (as the "
             "paper's Table 1). Scores are on the test split at the checkpoint selected on validation; each results "
             "JSON also records the paper's protocol (best test checkpoint).\n")
    if with_paper:
        paper = ["| Method (paper) | " + " | ".join(PAPER_COLUMNS) + " | Avg |", "|---" * (len(PAPER_COLUMNS) + 2) + "|"]
        for row in ROW_ORDER:
            p = PAPER_TABLE[row]
            paper.append(f"| {ROW_NAMES[row]} | " + " | ".join(_fmt(p[c]) for c in PAPER_COLUMNS) + f" | {_fmt(p['Avg'])} |")
        text += "\n### The paper's Table 1 (Llama-3.1-8B → Llama-3.2-3B)\n\n" + "\n".join(paper) + "\n"
    return text


def render_csv(columns, table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["row", *columns, "avg"])
    for row in ROW_ORDER:
        if row in table:
            values = [table[row].get(c) for c in columns]
            writer.writerow([row, *("" if v is None else f"{v:.6f}" for v in values),
                             _fmt(row_average(dict(zip(columns, values))))])
    return buf.getvalue()


def _atomic_text(path: Path, text: str) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plot_backend():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_scd_decisions(schedule_log: dict, path: Path) -> Path:
    """Fig. 3: per stage, both SCD terms per checkpoint (stacked bars) and the chosen one marked."""
    plt = _plot_backend()
    stages = [s for s in schedule_log["stages"] if s.get("terms")]
    if not stages:
        raise ValueError("schedule log has no SCD terms to plot")
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3), squeeze=False, sharey=True)
    for ax, stage in zip(axes[0], stages):
        js = [t["checkpoint"] for t in stage["terms"]]
        a = [t["kl_best"] for t in stage["terms"]]
        b = [t["kl_student"] for t in stage["terms"]]
        ax.bar([j + 1 for j in js], a, label="KL(p_best‖p_j)", color="#4c72b0")
        ax.bar([j + 1 for j in js], b, bottom=a, label="KL(q‖p_j)", color="#dd8452")
        chosen = stage["chosen"]
        ax.annotate("chosen", xy=(chosen + 1, a[chosen] + b[chosen]), xytext=(chosen + 1, (a[chosen] + b[chosen]) * 1.25 + 1e-3),
                    ha="center", arrowprops={"arrowstyle": "->"})
        ax.set_title(f"stage {stage['stage'] + 1}")
        ax.set_xlabel("teacher checkpoint j")
    axes[0][0].set_ylabel("probe-set KL")
    axes[0][0].legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_aw_histogram(aw_weights, path: Path, title: str = "") -> Path:
    """Fig. 4: histogram of AW over the train set, one curve per teacher checkpoint."""
    plt = _plot_backend()
    fig, ax = plt.subplots(figsize=(5, 3))
    for j in range(aw_weights.shape[1]):
        ax.hist(aw_weights[:, j].tolist(), bins=30, range=(0, 1), histtype="step", label=f"p({j + 1})")
    ax.set_xlabel("AW = L_S / (L_S + L_T)")
    ax.set_ylabel("train samples")
    ax.set_title(title or "Adaptive weights")
    ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_score_difference(teacher: dict, student: dict, path: Path, metric: str) -> Path:
    """Fig. 5: per-sample teacher − student score, sorted; TFS (>0) and SFS (<0) coloured."""
    plt = _plot_backend()
    s_by_id = {s["id"]: s["scores"][metric] for s in student["samples"]}
    diffs = sorted(s["scores"][metric] - s_by_id[s["id"]] for s in teacher["samples"] if s["id"] in s_by_id)
    colors = ["#c44e52" if d < 0 else ("#55a868" if d > 0 else "#999999") for d in diffs]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(diffs)), diffs, color=colors, width=1.0)
    tfs, sfs = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    ax.set_title(f"teacher − student ({metric}): TFS {tfs}, SFS {sfs}, ties {len(diffs) - tfs - sfs}")
    ax.set_xlabel("test samples (sorted)")
    _save(fig, path)
    plt.close(fig)
    return path


def write_report(run_dir, out_dir=None, extra_run_dirs=()) -> dict[str, Path]:
    """Write table1.md, table1.csv and the figures available from the run's artifacts."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    columns, table, raw = collect([run_dir, *extra_run_dirs])
    if not table:
        raise ValueError(f"{run_dir}: no results/<row>/<task>.json files to report")
    written = {"markdown": out / "table1.md", "csv": out / "table1.csv"}
    _atomic_text(written["markdown"], "## Table 1 (this run)\n\n" + render_markdown(columns, table))
    _atomic_text(written["csv"], render_csv(columns, table))
    for method in ("scd", "scd_aw"):
        log = run_dir / "distill" / method / "schedule_log.json"
        if log.is_file():
            written[f"fig3_{method}"] = plot_scd_decisions(json.loads(log.read_text()), out / f"fig3_{method}.png")
    aw = run_dir / "aw" / "aw_table.json"
    if aw.is_file():
        from distillkit_scd.weighting import AWTable

        written["fig4"] = plot_aw_histogram(AWTable.load(aw).weights, out / "fig4_aw.png", run_dir.name)
    for key in raw:
        row, task = key.split("/")
        if row == "teacher_sft" and f"student_sft/{task}" in raw:
            metric = PRIMARY_METRICS[task][0]
            written[f"fig5_{task}"] = plot_score_difference(raw[key], raw[f"student_sft/{task}"],
                                                            out / f"fig5_{task}.png", metric)
    logger.info("report: %s", ", ".join(str(p) for p in written.values()))
    return written
