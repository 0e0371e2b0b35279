"""The paper's figures from a run's artifacts: Fig. 3 (SCD decisions), Fig. 4 (AW histograms), Fig. 5
(per-sample teacher − student score, TFS / SFS).

Readability rules every figure keeps: checkpoints and stages are numbered from 1 (as the paper), every
mark has a legend entry, every axis a label, the title names the method and the task, and ties (zero
differences) stay visible.
"""

from __future__ import annotations

from pathlib import Path

from distillkit_scd.evaluation.results import primary_keys
from distillkit_scd.utils.atomic import atomic_write

TFS_COLOR, SFS_COLOR, TIE_COLOR = "#55a868", "#c44e52", "#999999"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"),
                        suffix=".png")


def plot_scd_decisions(schedule_log, path, title: str = "SCD") -> Path:
    """Fig. 3: per SCD stage, the two terms KL(p_best‖p_j) and KL(q‖p_j) per checkpoint j as stacked bars
    (their sum is what SCD minimises) and a red arrow on the chosen checkpoint, as the paper draws it.

    `schedule_log`: the list of stages `{"stage": i (0-based), "terms": [{"checkpoint": j (0-based),
    "kl_best", "kl_student"}], "chosen": j}`, or the schedule_log.json dict holding it under "stages".
    Displayed 1-based. `title`: names the method and the task.
    """
    from matplotlib.lines import Line2D

    stages = schedule_log["stages"] if isinstance(schedule_log, dict) else schedule_log
    stages = [s for s in stages if s.get("terms")]
    if not stages:
        raise ValueError(f"{path}: the schedule log has no stage with SCD terms to plot")
    plt = _pyplot()
    ymax = max(t["kl_best"] + t["kl_student"] for s in stages for t in s["terms"]) or 1.0
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3.4), squeeze=False, sharey=True)
    for ax, stage in zip(axes[0], stages):
        js = [t["checkpoint"] + 1 for t in stage["terms"]]
        a = [t["kl_best"] for t in stage["terms"]]
        b = [t["kl_student"] for t in stage["terms"]]
        ax.bar(js, a, color="#4c72b0", label="metric 1: KL(p_best‖p_j)")
        ax.bar(js, b, bottom=a, color="#dd8452", label="metric 2: KL(q‖p_j)")
        ckpts = [t["checkpoint"] for t in stage["terms"]]
        if stage["chosen"] not in ckpts:
            raise ValueError(f"{path}: stage {stage['stage']}: chosen checkpoint {stage['chosen']!r} is not "
                             f"among its terms' checkpoints {ckpts}")
        k = ckpts.index(stage["chosen"])
        top = a[k] + b[k]
        ax.annotate("", xy=(js[k], top), xytext=(js[k], top + 0.2 * ymax),
                    arrowprops={"arrowstyle": "->", "color": "#c44e52", "lw": 2})
        ax.set_ylim(0, 1.3 * ymax)
        ax.set_title(f"stage {stage['stage'] + 1} (step {stage.get('step', '?')}): j* = {stage['chosen'] + 1}",
                     fontsize=9)
        ax.set_xlabel("teacher checkpoint j")
        ax.set_xticks(js)
    axes[0][0].set_ylabel("probe-set KL (metric 1 + metric 2)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="#c44e52", marker=r"$\downarrow$", linestyle="none", markersize=10))
    labels.append("chosen checkpoint j* (lowest sum)")
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(f"Fig. 3 — {title}: teacher checkpoint schedule", y=1.12, fontsize=10)
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def plot_aw_histogram(aw_values: dict, path, title: str = "") -> Path:
    """Fig. 4: histogram of AW over the train set, one outline per key (task or teacher checkpoint)."""
    if not aw_values:
        raise ValueError(f"{path}: no AW values to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for label, values in aw_values.items():
        vals = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
        ax.hist(vals, bins=30, range=(0, 1), histtype="step", label=str(label))
    ax.axvline(0.5, color=TIE_COLOR, linestyle=":", label="0.5: no side favoured")
    ax.set_xlabel("AW = L_S / (L_S + L_T)  (near 1: teacher-favoured, distil more)")
    ax.set_ylabel("train samples")
    ax.set_title("Fig. 4 — " + (title or "adaptive weights"), fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def score_differences(teacher: dict, student: dict, metric: str | None = None) -> list[float]:
    """Per-sample teacher − student score on the ids both results share, sorted descending (as Fig. 5)."""
    metric = metric or primary_keys(teacher)[0]
    s_by_id = {s["id"]: s["scores"][metric] for s in student["samples"]}
    diffs = sorted((s["scores"][metric] - s_by_id[s["id"]] for s in teacher["samples"] if s["id"] in s_by_id),
                   reverse=True)
    if not diffs:
        raise ValueError(f"score difference: the teacher and student results share no sample id (task "
                         f"{teacher['task']!r})")
    return diffs


def tfs_sfs(diffs: list[float]) -> dict:
    """The paper's Fig. 5 sums: TFS deficit = Σ of positive teacher − student differences (teacher-favoured
    samples; the paper's "53.729 → 20.068" on NRNER), SFS advantage = Σ of the negative ones' magnitudes
    (student-favoured; "33.315"), and the sample counts of each side and of ties."""
    return {"tfs_deficit": sum(d for d in diffs if d > 0), "sfs_advantage": -sum(d for d in diffs if d < 0),
            "tfs": sum(d > 0 for d in diffs), "sfs": sum(d < 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
            "samples": len(diffs)}


def fig5_summary(teacher: dict, students: dict[str, dict], metric: str | None = None) -> dict:
    """`tfs_sfs` per student row (name → results), on `metric` (default: the task's first Table 1 metric)."""
    metric = metric or primary_keys(teacher)[0]
    return {"task": teacher["task"], "metric": metric, "teacher": "Teacher SFT",
            "rows": {name: tfs_sfs(score_differences(teacher, res, metric)) for name, res in students.items()}}


def plot_fig5(teacher: dict, students: dict[str, dict], path, metric: str | None = None) -> Path:
    """Fig. 5 as the paper draws it: one panel per student row (Student SFT, TD, …), the per-sample score
    difference teacher − student sorted in descending order; TFS (> 0), SFS (< 0) and ties coloured, ties
    drawn as small marks on the zero line so they stay visible; each panel titled with the summed TFS
    deficit and SFS advantage."""
    metric = metric or primary_keys(teacher)[0]
    if not students:
        raise ValueError(f"{path}: Fig. 5 needs at least one student row besides the teacher")
    plt = _pyplot()
    n = len(students)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows + 0.6), squeeze=False, sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (name, res) in zip(axes.flat, students.items()):
        diffs = score_differences(teacher, res, metric)
        sums = tfs_sfs(diffs)
        xs = range(1, len(diffs) + 1)
        colors = [TFS_COLOR if d > 0 else SFS_COLOR if d < 0 else TIE_COLOR for d in diffs]
        ax.bar(xs, diffs, color=colors, width=1.0)
        ties = [x for x, d in zip(xs, diffs) if d == 0]
        ax.plot(ties, [0] * len(ties), "|", color=TIE_COLOR, markersize=6)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(f"{name}: TFS deficit {sums['tfs_deficit']:.3f} ({sums['tfs']}), "
                     f"SFS advantage {sums['sfs_advantage']:.3f} ({sums['sfs']})", fontsize=8)
        ax.set_xlabel("test sample (sorted)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"teacher − student {metric}")
    from matplotlib.patches import Patch

    handles = [Patch(color=TFS_COLOR, label="TFS: teacher better"), Patch(color=SFS_COLOR, label="SFS: student better"),
               Patch(color=TIE_COLOR, label="tie (marked on 0)")]
    top = 1 - 0.55 / (2.8 * rows + 0.6)  # room for the title and legend above the panels
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, top))
    fig.suptitle(f"Fig. 5 — {teacher['task']}: Teacher SFT − each student row, per test sample", y=1.0, fontsize=10)
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def plot_score_difference(teacher_results: dict, student_results: dict, path, metric: str | None = None) -> Path:
    """Fig. 5 for one student row (see `plot_fig5`)."""
    return plot_fig5(teacher_results, {"Student": student_results}, path, metric)
