"""Table 1 (Markdown + CSV, ours beside the paper's) and the figures (3: SCD decisions, 4: AW histograms,
5: per-sample teacher − student score difference).

Reads `RUN_DIR/results/<row>/<task>.json` (schema in `evaluation/results.py`). Every cell is recomputed as the mean
of the per-sample scores of the results file, so the table is checkable against the samples.

Avg, as the paper computes it: the unweighted mean of the row's cells, NRNER exact and NRNER partial
counting as two separate numbers (paper: teacher SFT (0.547+0.792+0.667+0.932+0.813+0.677+0.985)/7 =
0.773; 8 of the paper's 9 rows fit this, the SCD row's printed 0.742 fits no rule — see
`reporting/paper_reference.py`). Our Avg runs over the paper's columns present in the table (all
columns when none of them is, e.g. a synthetic-only run); a row missing one of those cells gets no Avg.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from distillkit_scd.config.methods import METHODS, ROWS
from distillkit_scd.evaluation.results import load_results, table_columns
from distillkit_scd.reporting.figures import (  # noqa: F401  (figure functions, re-exported)
    fig5_summary,
    plot_aw_histogram,
    plot_fig5,
    plot_scd_decisions,
    plot_score_difference,
    score_differences,
)
from distillkit_scd.reporting.paper_reference import PAPER_COLUMNS, PAPER_TABLE
from distillkit_scd.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

def column_order(column: str) -> tuple[int, str]:
    """The paper's columns in its order, then any other column (synthetic, chat, …) by name."""
    return (PAPER_COLUMNS.index(column), "") if column in PAPER_COLUMNS else (len(PAPER_COLUMNS), column)


FOOTNOTE = (
    "Avg: unweighted mean of the row's numbers with NRNER exact and NRNER partial counted as two columns, as "
    "in the paper's Table 1 (teacher SFT: (0.547+0.792+0.667+0.932+0.813+0.677+0.985)/7 = 0.773; this fits "
    "every paper row but SCD, whose printed 0.742 is not the mean of its numbers, 0.738); over the "
    "paper's columns present here (all columns if none is), '—' when a row lacks one. NRNER partial is the "
    "JMED-LLM upstream definition (set membership; can exceed 1 per item). Classification columns are "
    "accuracy. Scores are on the test split, at the checkpoint the protocol in the title selects; each "
    "results JSON records both protocols' checkpoints (`report --protocol paper|clean`)."
)

PROTOCOLS = {
    "paper": "paper protocol: checkpoints selected on test, as the paper does",
    "clean": "clean protocol: checkpoints selected on validation",
}


@dataclass
class Table:
    """Cells `cells[row][column]`, columns in the paper's order, and the results they came from."""

    columns: list[str] = field(default_factory=list)
    lower_is_better: set[str] = field(default_factory=set)  # loss columns (chat metric `none`)
    notes: list[str] = field(default_factory=list)  # one line per chosen metric (chat tasks)
    cells: dict[str, dict[str, float]] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)  # "row/task" → results dict
    sources: dict[str, Path] = field(default_factory=dict)  # "row/task" → file
    protocols: set[str] = field(default_factory=set)  # protocols the cells were selected under

    def protocol_label(self) -> str:
        """The table's protocol, for its title ("mixed" when results files disagree)."""
        if len(self.protocols) == 1:
            return PROTOCOLS.get(next(iter(self.protocols)), next(iter(self.protocols)))
        return "mixed protocols: " + ", ".join(sorted(self.protocols)) if self.protocols else "protocol unrecorded"

    def avg_columns(self) -> list[str]:
        """The paper's columns present, else every higher-is-better column (a loss never enters an Avg)."""
        paper = [c for c in self.columns if c in PAPER_COLUMNS]
        return paper or [c for c in self.columns if c not in self.lower_is_better]

    def avg_label(self) -> str:
        """"Avg" when it spans the paper's seven columns, else "Avg (k cols)" (not comparable to the paper's)."""
        cols = self.avg_columns()
        return "Avg" if set(cols) == set(PAPER_COLUMNS) else f"Avg ({len(cols)} cols)"

    def average(self, row: str) -> float | None:
        """The paper's Avg over `avg_columns()`; None if the row lacks one of them."""
        values = [self.cells.get(row, {}).get(c) for c in self.avg_columns()]
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)


def _results_files(source) -> list[Path]:
    """A run directory (its results/<row>/<task>.json) or an explicit iterable of results files."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise ValueError(f"report: run directory {root} does not exist")
        return [p for row in ROWS for p in sorted((root / "results" / row).glob("*.json"))]
    return [Path(p) for p in source]


def protocol_samples(data: dict, protocol: str | None, where) -> tuple[list[dict], str | None]:
    """(samples, protocol) of a results file under `protocol` (None: the protocol it was run with).

    Raises:
        ValueError: the file records no checkpoint for that protocol (clean without a validation split).
    """
    selection = data.get("selection") or {}
    own = selection.get("protocol")
    if protocol is None or protocol == own:
        return data["samples"], own
    chosen = (selection.get("protocols") or {}).get(protocol)
    if chosen is None:
        raise ValueError(f"{where}: records no checkpoint for the {protocol} protocol (no validation split, or "
                         "written before both protocols were recorded)")
    return chosen["samples"], protocol


def build_table(source, protocol: str | None = None) -> Table:
    """Table 1 from a run directory or a list of results files (several run dirs: concatenate lists),
    under `protocol` ("paper" or "clean"; None: as each results file was run).

    Raises:
        ValueError: a file is malformed, names a row outside `ROWS`, lacks the protocol asked for, or two
            files give the same cell.
    """
    if protocol not in (None, *PROTOCOLS):
        raise ValueError(f"report --protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    table = Table()
    for path in _results_files(source):
        data = load_results(path)
        row, task = data["row"], data["task"]
        if row not in ROWS:
            raise ValueError(f"{path}: row {row!r} is not one of {', '.join(ROWS)}")
        key = f"{row}/{task}"
        if key in table.results:
            raise ValueError(f"report: {path} and {table.sources[key]} both give row {row!r}, task {task!r}")
        table.results[key], table.sources[key] = data, path
        samples, used = protocol_samples(data, protocol, path)
        if used and row not in ("teacher_zero_shot", "student_zero_shot"):  # zero-shot rows select nothing
            table.protocols.add(used)
        scoring = data.get("scoring") or {}
        for column, metric in table_columns(data, str(path)):
            scores = [s["scores"][metric] for s in samples]
            table.cells.setdefault(row, {})[column] = sum(scores) / len(scores)
            if column not in table.columns:
                table.columns.append(column)
            if scoring.get("lower_is_better"):
                table.lower_is_better.add(column)
        if scoring and _metric_is_chosen(task):
            note = _metric_note(task, scoring)
            if note not in table.notes:
                table.notes.append(note)
    table.columns.sort(key=column_order)
    return table


def _metric_is_chosen(task: str) -> bool:
    """True for a task whose recipe chooses the metric (no fixed columns on its registry entry)."""
    from distillkit_scd.tasks import TASKS

    return task not in TASKS or not TASKS[task].columns


def _metric_note(task: str, scoring: dict) -> str:
    """The footnote line of a chosen metric: its name and options, and what a loss column means."""
    options = json.dumps(scoring.get("options") or {}, ensure_ascii=False, sort_keys=True)
    line = f"{task}: metric {scoring.get('metric')} {options}"
    if scoring.get("lower_is_better"):
        line += (" — loss only: the cell is the mean per-sample answer cross-entropy on the test split "
                 "(lower is better), checkpoints selected by the lowest validation loss; not in Avg")
    return line


def collect(run_dirs) -> tuple[list[str], dict[str, dict[str, float]], dict[str, dict]]:
    """(columns, cells[row][column], results by "row/task") from one or more run directories."""
    files = [p for d in run_dirs for p in _results_files(Path(d))]
    table = build_table(files)
    return table.columns, table.cells, table.results


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def _md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(x) + " |" for x in lines]


def render_markdown(table: Table, with_paper: bool = True) -> str:
    """Our table, its footnote, and the paper's Table 1 for comparison."""
    ours = [[ROWS[row]] + [_fmt(table.cells[row].get(c)) for c in table.columns] + [_fmt(table.average(row))]
            for row in ROWS if row in table.cells]
    header = [f"{c} ↓" if c in table.lower_is_better else c for c in table.columns]
    lines = [f"## Table 1 (this run; {table.protocol_label()})", "", *_md_table(["Method", *header, table.avg_label()], ours),
             "", FOOTNOTE]
    lines += [f"- {note}" for note in table.notes]
    if with_paper:
        paper = [[ROWS[row]] + [_fmt(PAPER_TABLE[row][c]) for c in PAPER_COLUMNS] + [_fmt(PAPER_TABLE[row]["Avg"])]
                 for row in ROWS]
        lines += ["", "## The paper's Table 1 (Llama-3.1-8B-Instruct → Llama-3.2-3B-Instruct)", "",
                  *_md_table(["Method", *PAPER_COLUMNS, "Avg"], paper)]
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """One line per row: `row, <our columns>, avg, paper_<column>..., paper_avg` (6 decimals; empty = none)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "name", *table.columns, "avg", *(f"paper {c}" for c in PAPER_COLUMNS), "paper avg"])
    for row in ROWS:
        if row not in table.cells:
            continue
        ours = [table.cells[row].get(c) for c in table.columns] + [table.average(row)]
        paper = [PAPER_TABLE[row][c] for c in PAPER_COLUMNS] + [PAPER_TABLE[row]["Avg"]]
        writer.writerow([row, ROWS[row], *("" if v is None else f"{v:.6f}" for v in ours), *paper])
    return buf.getvalue()


def write_report(run_dir, out_dir=None, extra_run_dirs=(), protocol: str | None = None) -> dict[str, Path]:
    """Write table1.md, table1.csv and the figures the run's artifacts allow; returns name → path.

    Figures: fig3_<method>.png from distill/<method>/schedule_log.json (SCD rows), fig4_aw.png from
    aw/aw_table.json, fig5_<task>.png (+ fig5_<task>.json: the summed TFS deficit and SFS advantage per
    row) when teacher_sft and at least one student row (student SFT or a method) exist.
    """
    run_dir = Path(run_dir)
    for folder in (run_dir, *map(Path, extra_run_dirs)):
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such run directory" if not folder.exists() else
                             f"{folder}: not a directory (expected a run directory with results/)")
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = [p for d in (run_dir, *map(Path, extra_run_dirs)) for p in _results_files(d)]
    table = build_table(files, protocol)
    if not table.cells:
        raise ValueError(f"{run_dir}: no results/<row>/<task>.json files to report (rows: {', '.join(ROWS)})")
    written = {"markdown": atomic_write_text(out / "table1.md", render_markdown(table)),
               "csv": atomic_write_text(out / "table1.csv", render_csv(table))}
    tasks = sorted({key.split("/")[1] for key in table.results})
    task_name = ", ".join(tasks)
    for method in (m for m, spec in METHODS.items() if spec.schedule == "scd"):
        log = run_dir / "distill" / method / "schedule_log.json"
        if log.is_file():
            written[f"fig3_{method}"] = plot_scd_decisions(json.loads(log.read_text()), out / f"fig3_{method}.png",
                                                           title=f"{ROWS[method]} on {task_name}")
    aw = run_dir / "aw" / "aw_table.json"
    if aw.is_file():
        from distillkit_scd.teachers.aw_table import AWTable

        weights = AWTable.load(aw).weights  # (S, N)
        per_ckpt = {f"p({j + 1})": weights[:, j] for j in range(weights.shape[1])}
        written["fig4"] = plot_aw_histogram(per_ckpt, out / "fig4_aw.png",
                                            f"AW over the train split of {task_name}, per teacher checkpoint")
    for task in tasks:  # Fig. 5: teacher SFT − each student row, per sample
        teacher = table.results.get(f"teacher_sft/{task}")
        students = {ROWS[row]: table.results[f"{row}/{task}"] for row in ("student_sft", *METHODS)
                    if f"{row}/{task}" in table.results}
        if teacher is not None and students:
            written[f"fig5_{task}"] = plot_fig5(teacher, students, out / f"fig5_{task}.png")
            atomic_write_text(out / f"fig5_{task}.json", json.dumps(fig5_summary(teacher, students), indent=1))
    logger.info("report: %s", ", ".join(str(p) for p in written.values()))
    return written
